_base_ = ['./mask-rcnn_localvmamba-t-search_fpn_1x_coco.py']
