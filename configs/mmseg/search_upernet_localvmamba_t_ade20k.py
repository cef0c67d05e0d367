_base_ = ['./upernet_localvmamba-t-search_8xb2-160k_ade20k-512x512.py']
