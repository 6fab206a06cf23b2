"""Module and symbol API example: an RCNN-style multi_output head with class weights and a
LeNet-style center-loss network, both trained with ``mx.mod.Module.fit``.

    python -m examples.module_api --out runs/module_api
"""
