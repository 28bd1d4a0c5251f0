"""Pre-training data: offline corpora, local files or Hub datasets → tokenised, packed batches.

```python
from galorekit.data import DataConfig, build_tokenizer, load_pretraining_data

cfg = DataConfig()                      # offline KJV + Shakespeare, trained 8192-token BPE
tok = build_tokenizer(cfg)
data = load_pretraining_data(cfg, tok)
loader = data.train_loader(batch_size=16)   # infinite; loader.state_dict() resumes exactly
batch = next(loader)                        # LongTensor [16, 256]
val = data.val_batches(16)
```
"""

from __future__ import annotations

from galorekit.lazy import lazy_exports

# lazy: the loaders import torch, and ``galore --help`` imports galorekit.data.classification
_LAZY = {
    "OFFLINE_DATASETS": "galorekit.data.config",
    "OFFLINE_TOKENIZERS": "galorekit.data.config",
    "DataConfig": "galorekit.data.config",
    "MemoryTrainLoader": "galorekit.data.loader",
    "StreamingTrainLoader": "galorekit.data.loader",
    "PretrainingData": "galorekit.data.pipeline",
    "TrainLoader": "galorekit.data.pipeline",
    "list_datasets": "galorekit.data.pipeline",
    "load_pretraining_data": "galorekit.data.pipeline",
    "build_tokenizer": "galorekit.data.tokenizer",
    "train_bpe_tokenizer": "galorekit.data.tokenizer",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, eager=())
