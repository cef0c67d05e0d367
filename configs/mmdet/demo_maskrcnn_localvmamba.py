_base_ = ['./mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py']
