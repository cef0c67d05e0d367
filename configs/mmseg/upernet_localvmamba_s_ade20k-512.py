_base_ = ['./upernet_localvmamba-s_8xb2-160k_ade20k-512x512.py']
