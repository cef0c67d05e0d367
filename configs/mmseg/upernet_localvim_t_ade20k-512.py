_base_ = ['./upernet_localvim-t_mln_8xb2-160k_ade20k-512x512.py']
