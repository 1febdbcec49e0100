import pickle

import torch
from torch.utils.data import DataLoader

from conftest import t2v
from pipeline.data import ShardDataset


def test_dataset_in_a_dataloader_with_two_workers(toy, tmp_path):
    out = tmp_path / "frames"
    t2v("frames", "--labels", toy / "labels" / "train.json", "--videos", toy / "videos", "--out", out,
        "--shard-size", "8")
    ds = ShardDataset(out)
    first = ds[0]["video"]  # opens a handle in this process ...
    pickle.dumps(ds)  # ... which must not travel into workers
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    seen, videos = [], []
    for batch in loader:
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape[1:] == (16, 32, 32, 3)
        seen += batch["id"]
        videos.append(batch["video"])
    assert seen == list(ds.rows["id"]) and len(seen) == len(ds)
    assert torch.equal(torch.cat(videos)[0], first)
