"""Shared test helpers: the NumPy reference model (reference.py) and a small ORT runner for built graphs."""
from __future__ import annotations

import numpy as np


class OrtLlama:
    """Drives a graph from edgeai.convert.builder the way the C++ engine does.

    shared=True: one [batch, kv_heads, max_seq_len, head_dim] buffer per past/present pair, bound to both
    the input and the output through IOBinding (in-place KV cache). shared=False: past arrays are fed
    and the returned presents kept (the graph then grows the cache itself).
    """

    def __init__(self, model_path, info: dict, batch: int = 1, shared: bool = True, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        self.info, self.batch, self.shared = info, batch, shared
        self.L = info["num_layers"]
        shape = (batch, info["num_kv_heads"], info["max_seq_len"] if shared else 0, info["head_dim"])
        names = [f"{k}_{i}" for i in range(self.L) for k in ("key", "value")]
        if shared:
            self.kv = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for n in names}
        else:
            self.kv = {n: np.zeros(shape, np.float32) for n in names}
        self.ort = ort

    def step(self, ids, past_len) -> np.ndarray:
        """Feed ids [batch, seq] after past_len cached tokens (int or per-row list); returns logits."""
        ids = np.asarray(ids, np.int64).reshape(self.batch, -1)
        s = ids.shape[1]
        past = np.broadcast_to(np.asarray(past_len, np.int32), (self.batch,))
        seqlens = (past + s - 1).astype(np.int32)
        total = np.array([past.max() + s], np.int32)
        if self.shared:
            b = self.sess.io_binding()
            b.bind_cpu_input("input_ids", ids)
            b.bind_cpu_input("seqlens_k", seqlens)
            b.bind_cpu_input("total_sequence_length", total)
            b.bind_output("logits")  # first bound output -> index 0 below
            for n, v in self.kv.items():
                b.bind_ortvalue_input("past_" + n, v)
                b.bind_ortvalue_output("present_" + n, v)
            self.sess.run_with_iobinding(b)
            return b.get_outputs()[0].numpy()  # logits only: copying every present would cost MBs/step
        feeds = {"input_ids": ids, "seqlens_k": seqlens, "total_sequence_length": total}
        feeds.update({"past_" + n: v[:, :, : int(past.max())] for n, v in self.kv.items()})
        out = self.sess.run(None, feeds)
        names = [o.name for o in self.sess.get_outputs()]
        for n, v in zip(names[1:], out[1:]):
            self.kv[n.replace("present_", "")] = v
        return out[0]
