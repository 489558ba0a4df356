"""runtime/precision.py: the one precision enum, read as plain strings in JSON, metadata and messages."""
import json

from alexnet_deploy.runtime.precision import PRECISIONS, Precision


def test_precision_is_its_string():
    assert PRECISIONS == ("fp32", "fp16", "int8") and Precision("int8") is Precision.INT8
    assert json.dumps([Precision.FP16]) == '["fp16"]' and f"{Precision.FP32}" == "fp32" == str(Precision.FP32)
    assert Precision.INT8 == "int8" and ",".join(Precision) == "fp32,fp16,int8"


def test_deploy_plans_by_the_same_precisions():
    from alexnet_deploy.deploy import plan

    assert plan.PRECISIONS is PRECISIONS
