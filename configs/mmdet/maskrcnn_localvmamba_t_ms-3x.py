_base_ = ['./mask-rcnn_localvmamba-t_fpn_ms-crop-3x_coco.py']
