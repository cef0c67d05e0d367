_base_ = ['./upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py']
