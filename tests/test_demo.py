"""The demo picks pipeline depths that fit the machine: one rank per core, or per GPU."""
from pipeline_ref.demo import pipeline_depths


def test_depths_fit_the_cores_or_gpus():
    assert pipeline_depths("cpu", cores=2, gpus=0) == [2]
    assert pipeline_depths("cpu", cores=6, gpus=0) == [2, 4]
    assert pipeline_depths("cuda", cores=2, gpus=8) == [2, 4, 8]
    assert pipeline_depths("cuda", cores=64, gpus=1) == [2]      # two ranks share the one GPU
