_base_ = ['./mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco.py']
