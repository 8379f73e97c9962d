from setuptools import find_packages, setup


def read_requirements(path):
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip() and not line.startswith('-r')]


setup(
    name='soma',
    version='1.0.0',
    description='SoMA: Singular Value Decomposed Minor Components Adaptation '
    '(CVPR 2025) as an OpenMMLab plugin',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(include=['soma', 'soma.*']),
    # torch and mmcv (full build with ops) are installed by tools/setup_env.sh,
    # they are not pinned here so that a CUDA build already present is kept.
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={
        'optional': read_requirements('requirements/optional.txt'),
        'tests': read_requirements('requirements/tests.txt'),
        'deploy': read_requirements('requirements/deploy.txt'),
    },
    zip_safe=False,
)
