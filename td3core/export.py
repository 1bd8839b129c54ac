"""A summary in the forms other tools train on.

- `summary_to_inter`: synthetic interaction sequences sampled from the summary's
  probabilities, as a RecBole atomic `.inter` file (original item ids, synthetic user
  ids `s0`, `s1`, ..., timestamps increasing along each sequence). Seeded: the same
  summary and seed give the same bytes.
- `summary_to_npy`: the dense probabilities S, `[mu, zeta, n_items+1]` float32
  (column 0 = padding, always 0), as a `.npy` file; refused above a size limit,
  since S grows with the number of items.
- `SummaryDataset`: a PyTorch `Dataset` of the synthetic users' soft sequences.

The summary is the `td3-summary/1` file (`td3core.summary`); S is computed a few
users at a time, so memory stays at one batch whatever the summary's size.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from td3core.errors import DataError
from td3core.summary import Summary, SummaryFile, load_summary, summary_from_bytes

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
# Users per batch are chosen so one batch of S holds about this many floats (64 MB).
_BATCH_ELEMENTS = 1 << 24


def _batches(summary: Summary) -> list[torch.Tensor]:
    per_user = summary.length * (summary.n_items + 1)
    size = max(1, _BATCH_ELEMENTS // per_user)
    return list(torch.arange(summary.users).split(size))


def summary_to_inter(summary_file: SummaryFile, *, seed: int) -> bytes:
    """One sampled item per position of every synthetic user's sequence, as a RecBole
    `.inter` file: `s<u>  <original item id>  <u * zeta + position>` per line."""
    summary, item_ids = summary_file.summary, summary_file.item_ids
    bad = next((i for i in item_ids[1:] if i is None or any(c in i for c in "\t\r\n")), False)
    if bad is not False:
        raise DataError(
            f"item id {bad!r} cannot be written to a tab-separated .inter file "
            "(it is missing or holds a tab or line break)"
        )
    generator = torch.Generator().manual_seed(seed)
    zeta = summary.length
    out = io.StringIO()
    out.write(INTER_HEADER)
    with torch.no_grad():
        for users in _batches(summary):
            probs = summary.probs(users).double()  # float64: sums are exact enough to sample
            flat = probs.reshape(-1, probs.shape[-1])
            picks = torch.multinomial(flat, 1, generator=generator).view(len(users), zeta)
            for row, user in enumerate(users.tolist()):
                base = user * zeta
                out.writelines(
                    f"s{user}\t{item_ids[item]}\t{base + t}\n"
                    for t, item in enumerate(picks[row].tolist())
                )
    return out.getvalue().encode("utf-8")


def npy_size(summary: Summary) -> int:
    """Bytes of the dense `.npy` export (header included) without computing it."""
    shape = (summary.users, summary.length, summary.n_items + 1)
    return _npy_header_size(shape) + 4 * int(np.prod(shape))


def summary_to_npy(summary_file: SummaryFile, *, max_bytes: int) -> bytes:
    """The dense probabilities `[mu, zeta, n_items+1]` (float32, C order) as `.npy`
    bytes; a DataError when the file would be larger than `max_bytes`."""
    summary = summary_file.summary
    size = npy_size(summary)
    if size > max_bytes:
        raise DataError(
            f"the dense summary would be {size} bytes ({summary.users} users x "
            f"{summary.length} positions x {summary.n_items + 1} items x 4 bytes), over the "
            f"limit of {max_bytes} bytes; export it as sequences (inter) or use the factors"
        )
    out = io.BytesIO()
    shape = (summary.users, summary.length, summary.n_items + 1)
    np.lib.format.write_array_header_1_0(
        out, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    with torch.no_grad():
        for users in _batches(summary):
            out.write(summary.probs(users).float().numpy().astype("<f4", copy=False).tobytes())
    return out.getvalue()


def _npy_header_size(shape: tuple[int, ...]) -> int:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.tell()


class SummaryDataset(Dataset[torch.Tensor]):
    """The synthetic users of a summary as a PyTorch `Dataset`: item `u` is user u's
    soft sequence, a `[zeta, n_items+1]` float32 tensor whose row t is the
    distribution over items at position t (column 0 = padding, always 0; column k is
    the item `item_ids[k]`). Rows are computed on access, so a large summary costs
    only its factors in memory.

        data = SummaryDataset("summary.safetensors")
        for soft in torch.utils.data.DataLoader(data, batch_size=32, shuffle=True):
            ...  # soft: [32, zeta, n_items+1]; train with a soft cross-entropy

    `path_or_file`: a path to a `td3-summary/1` file, its bytes, or a loaded
    `SummaryFile`.
    """

    def __init__(self, path_or_file: str | os.PathLike[str] | bytes | SummaryFile):
        if isinstance(path_or_file, SummaryFile):
            loaded = path_or_file
        elif isinstance(path_or_file, bytes):
            loaded = summary_from_bytes(path_or_file)
        else:
            loaded = load_summary(Path(path_or_file))
        self.file = loaded
        self.item_ids = loaded.item_ids
        self._summary = loaded.summary.eval()

    def __len__(self) -> int:
        return self._summary.users

    def __getitem__(self, user: int) -> torch.Tensor:
        if not -len(self) <= user < len(self):
            raise IndexError(f"user {user} out of range 0..{len(self) - 1}")
        with torch.no_grad():
            return self._summary.probs(torch.tensor([user % len(self)]))[0]
