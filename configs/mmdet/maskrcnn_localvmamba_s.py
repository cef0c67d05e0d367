_base_ = ['./mask-rcnn_localvmamba-s_fpn_1x_coco.py']
