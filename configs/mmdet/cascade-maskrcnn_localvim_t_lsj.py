_base_ = ['./cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py']
