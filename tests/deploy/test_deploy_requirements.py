"""The deployment packages are part of the set-up (so `make test` covers them) and keep
this project's numpy < 2."""
import os.path as osp
import re

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _read(*parts):
    with open(osp.join(REPO, *parts)) as f:
        return f.read()


def test_requirements_and_setup_install_the_deploy_extra():
    deploy = _read('requirements', 'deploy.txt')
    names = [re.split(r'[<>=!\s]', line)[0] for line in deploy.splitlines()
             if line.strip() and not line.startswith('#')]
    assert {'onnx', 'onnxruntime', 'onnxscript', 'ml_dtypes', 'numpy'} <= set(names)
    assert 'ml_dtypes==0.5.4' in deploy and 'numpy<2' in deploy
    assert '-r requirements/deploy.txt' in _read('requirements.txt').splitlines()
    setup_env = _read('tools', 'setup_env.sh')
    assert '-nt requirements/deploy.txt' in setup_env  # the up-to-date stamp sees it
    assert re.search(r'pip_install -r requirements/runtime.txt.*\\\n\s*-r requirements/deploy.txt',
                     setup_env)


def test_installed_versions_work_together():
    import ml_dtypes
    import numpy
    import onnx
    import onnxruntime
    import onnxscript
    assert int(numpy.__version__.split('.')[0]) < 2
    assert ml_dtypes.__version__ == '0.5.4'
    assert onnx.__version__ and onnxruntime.__version__ and onnxscript.__version__
    assert 'CPUExecutionProvider' in onnxruntime.get_available_providers()
