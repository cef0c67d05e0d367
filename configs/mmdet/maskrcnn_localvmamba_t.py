_base_ = ['./mask-rcnn_localvmamba-t_fpn_1x_coco.py']
