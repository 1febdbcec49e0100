"""A PyTorch Dataset over the frames stage's HDF5 shards.

Rows come from ``manifest.csv`` (status ``ok`` only, ``read_manifest``). Files are opened lazily
in whichever process reads them and the handles are dropped when pickled, so
the dataset can be handed to DataLoader workers (an h5py handle must not cross
a fork). Items are uint8 tensors (T,H,W,3): normalising is the model's job.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .errors import UserError


def read_manifest(data: Path, ok_only: bool = True) -> pd.DataFrame:
    """A frames output's manifest.csv: by default only the clips that decoded (status ``ok``),
    which are the ones the shards hold."""
    m = Path(data) / "manifest.csv"
    if not m.exists():
        raise UserError(f"{data} is not a finished frames output (no manifest.csv): run `t2v frames`")
    try:
        df = pd.read_csv(m, dtype={"id": str}, keep_default_na=False)
        ok = df["status"] == "ok"
    except (ValueError, KeyError, pd.errors.ParserError) as e:
        raise UserError(f"{m} is not a frames manifest ({type(e).__name__}); rerun `t2v frames`") from None
    return df[ok].reset_index(drop=True) if ok_only else df


class ShardDataset(Dataset):
    def __init__(self, root, ids=None):
        self.root = Path(root)
        df = read_manifest(self.root)
        if ids is not None:
            df = df[df["id"].isin(set(ids))]
        self.rows = df.reset_index(drop=True)
        self._files: dict[str, object] = {}
        self._check_ids()

    def _check_ids(self) -> None:
        """Each row's clip must be the one its shard stores under that id: a shard replaced after
        the manifest was written would otherwise pair clips with other samples' captions."""
        for shard, rows in self.rows.groupby("shard"):
            path = self.root / "shards" / str(shard)
            try:
                with h5py.File(path, "r") as f:
                    stored = f["ids"].asstr()[:]
                    n = len(f["videos"])
            except (OSError, KeyError, ValueError) as e:
                raise UserError(f"{path} is missing or unreadable ({type(e).__name__}); rerun `t2v frames`") from None
            index = rows["index"].to_numpy(dtype=np.int64)
            if (index < 0).any() or (index >= min(n, len(stored))).any() or \
                    list(stored[index]) != rows["id"].tolist():
                raise UserError(f"{path} does not hold the clips {self.root}/manifest.csv lists for it (the shard "
                                "was replaced or the manifest edited); delete it and rerun `t2v frames`")

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, shard: str):
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = h5py.File(self.root / "shards" / shard, "r")
        return f

    def __getitem__(self, i: int) -> dict:
        r = self.rows.iloc[i]
        video = self._file(r["shard"])["videos"][int(r["index"])]  # T,H,W,3 uint8
        return {"video": torch.from_numpy(np.ascontiguousarray(video)), "id": r["id"],
                "label": r["label"], "template": r["template"],
                "placeholders": r["placeholders"]}  # JSON text: lists of unequal length don't collate

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}  # never pickle open HDF5 handles
        return state
