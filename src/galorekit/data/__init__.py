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

from galorekit.data.config import OFFLINE_DATASETS, OFFLINE_TOKENIZERS, DataConfig
from galorekit.data.loader import MemoryTrainLoader, StreamingTrainLoader
from galorekit.data.pipeline import (
    PretrainingData,
    TrainLoader,
    list_datasets,
    load_pretraining_data,
)
from galorekit.data.tokenizer import build_tokenizer, train_bpe_tokenizer

__all__ = [
    "OFFLINE_DATASETS",
    "OFFLINE_TOKENIZERS",
    "DataConfig",
    "MemoryTrainLoader",
    "PretrainingData",
    "StreamingTrainLoader",
    "TrainLoader",
    "build_tokenizer",
    "list_datasets",
    "load_pretraining_data",
    "train_bpe_tokenizer",
]
