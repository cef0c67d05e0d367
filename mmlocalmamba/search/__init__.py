"""Layer-wise scan-direction search (the DARTS-style search of the LocalMamba paper).

* :mod:`.arch`: find and group the architecture parameters (``multi_scan.weights``) of any
  supernet; the ``paramwise_cfg`` recipe for mmengine optimizers.
* :mod:`.export`: top-k directions per layer from a supernet checkpoint, JSON, config snippet,
  heatmap PNG.
* :mod:`.trainer`: the pieces of the ImageFolder classification search (the paper's setting):
  dataset, model wrapper, metric, history hook; imported on use. The search runs on mmengine's
  Runner through :func:`mmlocalmamba.apis.search_cls.search_classification`.

Searching on detection/segmentation data uses the normal mmdet/mmseg runners with a supernet
backbone (``directions=None``) and ``ArchWeightsLoggerHook`` (see ``configs/*/*-search_*.py``).
"""
from .arch import (ARCH_PARAM_KEY, arch_candidates, arch_param_names, arch_parameters,
                   arch_paramwise_cfg, arch_probabilities, format_arch_table, layer_label,
                   normalized_entropy, search_layers, search_space, split_parameters)
from .export import (DirectionSearchResult, export_all, export_directions, format_snippet,
                     load_arch_logits, plot_heatmap, save_json, select_topk)

__all__ = [
    'ARCH_PARAM_KEY', 'arch_candidates', 'arch_param_names', 'arch_parameters',
    'arch_paramwise_cfg', 'arch_probabilities', 'format_arch_table', 'layer_label',
    'normalized_entropy', 'search_layers', 'search_space', 'split_parameters',
    'DirectionSearchResult', 'export_all', 'export_directions', 'format_snippet',
    'load_arch_logits', 'plot_heatmap', 'save_json', 'select_topk'
]
