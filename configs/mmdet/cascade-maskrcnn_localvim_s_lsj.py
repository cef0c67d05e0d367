_base_ = ['./cascade-mask-rcnn_localvim-s_sfp_lsj-100e_coco.py']
