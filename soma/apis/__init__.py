"""The functions the tools and the README use, importable from ``soma.apis``.

    from soma.apis import init_model, inference_model
    model = init_model(config, checkpoint, device='cpu', backbone=converted)
    result = inference_model(model, 'img.png')

Names load lazily (PEP 562): ``import soma.apis`` imports none of its submodules, the first
use of a name imports the module that defines it. The checkpoint operations live in
:mod:`soma.checkpoints`, the weight converters beside their backbones
(:mod:`soma.models.backbones`); they are exported here too, as before. Functions named
like their submodule are exported under another name, so that ``soma.apis.train`` etc. stay
the submodules:
``run_train`` / ``run_test`` (the entry points of ``tools/train.py`` / ``tools/test.py``, taking
their argument list), ``run_benchmark`` (``soma.apis.benchmark.benchmark``) and
``run_collect_results`` (``soma.apis.collect_results.collect_results``).
"""
import importlib

# public name -> (module, attribute); a module without a dot is a submodule of soma.apis
_EXPORTS = {}
for _module, _names in {
        'inference': ('init_model', 'inference_model', 'visualize', 'colorize',
                      'CITYSCAPES_PALETTE'),
        'soma.checkpoints': (
            'extract_soma_weights', 'extract_soma_dgod_weights', 'merge_soma_weights',
            'fold_adapters', 'generate_full_weights', 'extract_file', 'merge_file',
            'load_soma_checkpoint', 'load_soma_checkpoint_file', 'check_checkpoint_for_model',
            'checkpoint_semantics', 'extract_peft_dir', 'merge_soma_weights_with_peft'),
        'collect_results': ('collect_rows', ),
        'soma.models.backbones.convert_dinov3': ('convert_dinov3_checkpoint', ),
        'soma.models.backbones.convert_dinov2': ('convert_dinov2_checkpoint',
                                                 'convert_dinov2_state_dict',
                                                 'hf_dinov2_to_ours'),
        'spectrum': ('analyze_spectrum', 'layer_spectra', 'singular_values',
                     'minor_energy_share'),
        'benchmark': ('merged_copy', 'plain_copy', 'time_models'),
        'demo': ('run_demo', ),
        'demo_dgod': ('run_dgod_demo', ),
        'deploy': ('export_onnx', 'deploy_metadata'),
        'video': ('segment_video', ),
}.items():
    _EXPORTS.update({name: (_module, name) for name in _names})
# functions named like their submodule get another name (the submodule keeps its own)
_EXPORTS.update(run_train=('train', 'train'), run_test=('test', 'test'),
                run_benchmark=('benchmark', 'benchmark'),
                run_collect_results=('collect_results', 'collect_results'))
del _module, _names

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module if '.' in module else f'{__name__}.{module}'),
                    attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
