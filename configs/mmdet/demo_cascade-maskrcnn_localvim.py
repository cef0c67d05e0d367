_base_ = ['./cascade-mask-rcnn_localvim-demo_sfp_1xb4-lsj-12e_demo-coco.py']
