_base_ = ['./mask-rcnn_localvmamba-s_fpn_ms-crop-3x_coco.py']
