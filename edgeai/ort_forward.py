"""The production forward pass: an ONNX Runtime session bound once to the engine's buffers.

The C++ engine owns the KV cache, the token buffer and the logits buffer; this class binds them to the
session with I/O binding (no copies). With GroupQueryAttention the past and present KV tensors are the
same memory, so a step only writes the new tokens' keys/values in place. Per call, it rebinds only what
changed (the input shape between prefill chunks and decode steps, or the KV buffers after the engine
grew them for beam search) and updates two small position inputs.
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import time
import weakref

import numpy as np
import onnxruntime as ort


_MADV_RANDOM, _MADV_DONTNEED, _MADV_PAGEOUT = 1, 4, 21


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def drop_pages(spans, libc=None) -> None:
    """MADV_DONTNEED on clean file mappings [(address, length)]: their pages leave our resident set (they stay
    in the page cache, and the next touch maps them back with a minor fault)."""
    libc = libc or _libc()
    for start, length in spans:
        libc.madvise(start, length, _MADV_DONTNEED)


def release_mapped_weights(data_path: str, gathered_ranges=(), row_spans=None) -> int:
    """Give back the resident pages of the weight file that ONNX Runtime keeps mapped (Linux; returns bytes).

    ORT memory-maps page-aligned external data. MatMulNBits copies its weights into pre-packed buffers, but
    the tied embedding table stays mapped for Gather, and pre-packing the LM head read all of it: ~45 MB
    that count as ours although decoding touches only the rows of the tokens it sees. Only mappings with no
    dirty page are advised, so MADV_DONTNEED drops nothing but clean copies of the file; a page needed later
    is faulted back in from the page cache.

    gathered_ranges: [offset, length] of the tables read row by row (graph_info). A fault maps the whole
    page-cache folio around a row, and a freshly written or read-ahead file sits in folios of up to 2 MB, so a
    512-token prompt mapped ~30 MB of an 8-bit embedding table. These ranges are re-cached in 4 KB pages
    (`_recache_in_pages`) and marked random access: a 512-token prompt then maps ~8.5 MB (SmolLM2 q4; peak
    RSS 276 -> 252 MB, load time unchanged). Leaving them evicted instead would map only the rows' own pages
    (-5 MB) but cost the first prompt of every process a disk read per row (measured +60-100 ms TTFT).
    row_spans: if a list, receives (address, length) of those tables' mappings (for `drop_pages`).
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        target = os.path.realpath(data_path)
        regions, current = [], None
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    current = (parts[0], int(parts[2], 16)) if len(parts) >= 6 and parts[5] == target else None
                elif current and line.startswith("Private_Dirty:") and int(line.split()[1]) == 0:
                    regions.append(current)
        libc = _libc()
        released = 0
        fd = os.open(target, os.O_RDONLY) if gathered_ranges else None
        try:
            for span, offset in regions:
                start, end = (int(x, 16) for x in span.split("-"))
                row_by_row = any(offset < o + n and o < offset + end - start for o, n in gathered_ranges)
                if row_by_row:
                    libc.madvise(start, end - start, _MADV_RANDOM)  # no read-ahead on faults
                if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
                    released += end - start
                    if row_by_row:
                        _recache_in_pages(fd, offset, end - start)
                        if row_spans is not None:
                            row_spans.append((start, end - start))
        finally:
            if fd is not None:
                os.close(fd)
        return released
    except (OSError, AttributeError, ValueError):
        return 0


class paged_out_while_loading:
    """Context manager: while ONNX Runtime builds a session, reclaim the weight file's mapped pages as it goes.

    Building the session maps the external data and reads every weight once to pre-pack it. The packed copies
    are the weights from then on, but the file pages read stay resident until the session is built: for the
    1.5B model the load peak was 2.0-2.1 GB against 1.6 GB once loaded, above llama.cpp's peak on the same
    GGUF (1.88 GB). A thread asks the kernel every `every` seconds to page out those mappings (MADV_PAGEOUT,
    Linux 5.4+): the load peak falls to about the loaded size (docs/models.md). PAGEOUT, unlike DONTNEED,
    never discards data: a page ONNX Runtime had written would be kept (or swapped), and a clean page read
    again is faulted back from the file. The cost is that the pages also leave the page cache, so the next
    load of the same folder reads the file from disk; on a busy 2-core box load took 8-15 % longer (medians,
    within that box's noise). A no-op where the call does not exist.

    Every 0.02 s rather than 0.1 s: from a warm page cache ONNX Runtime reads the file at over 1 GB/s, so 0.1 s let
    up to ~100 MB of read pages pile up between passes (0.5B, load average ~2.5: the build peaked at 742-748 MB
    against 656 MB once built; 0.02 s: 672-679 MB, docs/models.md; on a busier box the thread itself runs late).
    A pass costs 0.5-2 ms (one read of /proc/self/maps, one madvise per mapping); the build time did not change
    (medians of 5 interleaved builds: 3.52 s at 0.1 s, 3.47 s at 0.02 s)."""

    def __init__(self, data_path: str, every: float = 0.02):
        self.target, self.every = os.path.realpath(data_path), every
        self._stop = threading.Event()
        self._thread = None

    def _page_out(self, libc) -> bool:
        with open("/proc/self/maps") as maps:  # /proc/self/smaps would cost ~100 ms per read at this size
            spans = [line.split()[0] for line in maps if line.rstrip().endswith(self.target)]
        for span in spans:
            start, end = (int(x, 16) for x in span.split("-"))
            if libc.madvise(start, end - start, _MADV_PAGEOUT) != 0:
                return ctypes.get_errno() != 22  # EINVAL: a kernel without MADV_PAGEOUT; stop trying
        return True

    def _run(self):
        libc = _libc()
        while not self._stop.wait(self.every):
            try:
                if not self._page_out(libc):
                    return
            except OSError:
                return

    def __enter__(self):
        if sys.platform.startswith("linux") and os.path.exists(self.target):
            self._thread = threading.Thread(target=self._run, name="edgeai-page-out", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return False


def _recache_in_pages(fd: int, offset: int, length: int) -> None:
    """Drop [offset, offset+length) of the file from the page cache and read it back in 4 KB pages.

    Reads through a descriptor advised POSIX_FADV_RANDOM get no read-ahead and so single-page folios; a fault
    on a row then maps that page plus ONE fault-around window of cached neighbours (64 KB) instead of a whole
    large folio. Only pages that no process maps leave the cache."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    chunk = 1 << 20
    for pos in range(offset, offset + length, chunk):
        os.pread(fd, min(chunk, offset + length - pos), pos)


def return_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc). Loading parses a 1.5 MB tokenizer JSON and a protobuf
    graph; the temporary buffers are freed but stay in the process (~15 MB) until trimmed."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def session_options(threads: int | None, spin: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # The memory pattern pre-plans one block for all activations of a run shape, sized by the longest
    # prefill chunk seen; planning per tensor keeps peak memory lower at no measurable decode cost.
    so.enable_mem_pattern = False
    if not spin:
        # Two sessions taking turns (speculative decoding's draft and target): a pool that spin-waits after
        # its run keeps the cores busy while the other session computes.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtForward:
    """Callable the engine invokes as
    forward(batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits)."""

    DROP_EVERY = 64  # tokens fed between drops of the embedding table's pages (see __init__)

    def __init__(self, model_path: str, graph: dict, threads: int | None = None, spin: bool = True):
        try:
            with paged_out_while_loading(model_path + ".data"):
                self.session = ort.InferenceSession(model_path, session_options(threads, spin),
                                                    providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types; name the file and the cause
            raise ValueError(f"cannot load the model graph {model_path} (corrupt or incomplete model folder? "
                             f"re-run `edgeai convert` or `edgeai pull --force`): {exc}") from exc
        # Building the session frees its temporaries (the parsed graph, ~16 MB at 0.5B) but glibc keeps them: hand
        # them back now, before the tokenizer and the first prompt allocate on top (0.5B: 656 -> 640 MB).
        return_free_heap()
        # A step reads one embedding row per token. The rows' pages leave our resident set every DROP_EVERY
        # tokens instead of piling up (8.5 MB after a 512-token prompt, up to the whole 27 MB table over
        # time). Not after every step: unmapping interrupts the other ORT thread (TLB shootdown), which cost
        # 7.5% of decode speed when done per step.
        self._row_spans, self._libc, self._rows_fed = [], _libc(), 0
        release_mapped_weights(model_path + ".data", graph.get("gathered_ranges") or (), self._row_spans)
        self._bind_session(graph)

    def sharing(self) -> "OrtForward":
        """A second forward over the same session (same weights, no second load) with its own I/O binding,
        for another engine: the batch engine (edgeai/batching.py) next to the LLM's own engine."""
        twin = object.__new__(OrtForward)
        twin.session, twin._graph = self.session, self._graph
        twin._row_spans, twin._libc, twin._rows_fed = self._row_spans, self._libc, 0
        twin._bind_session(self._graph)
        return twin

    def _bind_session(self, graph: dict) -> None:
        self._graph = graph
        self.binding = self.session.io_binding()
        self.layers = int(graph["num_layers"])
        self.vocab = int(graph["vocab_size"])
        self.all_logits = bool(graph.get("all_logits", False))
        # Graphs built before draft checking give the last position's logits only (then n_logits is always 1);
        # all-logits builds give every position's, so they check drafts too (their last rows are copied out).
        self.rows_input = graph.get("logits_rows_input") == "num_logits"
        self.multi_logits = self.rows_input or self.all_logits
        self.num_logits = np.ones(1, dtype=np.int64)
        if self.rows_input:
            self.binding.bind_input("num_logits", "cpu", 0, np.int64, [1], self.num_logits.ctypes.data)
        self.seqlens = np.zeros(1, dtype=np.int32)
        self.total = np.zeros(1, dtype=np.int32)
        self._engine = None
        self._kv_key = self._ids_key = self._logits_key = self._batch = None
        self._scratch = None
        self.run_s = 0.0  # time inside ONNX Runtime's run, for the forward/overhead split

    def attach(self, engine) -> None:
        self._engine = weakref.ref(engine)  # the engine holds us: no reference cycle

    def _bind_kv(self, engine, batch, first_row=0):
        """Bind KV rows [first_row, first_row + batch): the buffers are [rows, heads, max_seq, head_dim], so a
        run over later rows starts first_row whole rows into each buffer."""
        _, heads, max_seq, head_dim = engine.kv_shape
        shape = [batch, heads, max_seq, head_dim]
        offset = first_row * heads * max_seq * head_dim * 4
        for i in range(self.layers):
            for kind, is_value in (("key", False), ("value", True)):
                addr = engine.kv_address(i, is_value) + offset
                self.binding.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, shape, addr)
                self.binding.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, shape, addr)

    def __call__(self, batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits=1):
        """Every row at the same position (the Engine: one sequence, or beams)."""
        self._run(0, batch, n_tokens, None, past_len, tokens_addr, logits_addr, kv_version, n_logits)

    def rows(self, first_row, batch, n_tokens, past_lens_addr, tokens_addr, logits_addr, kv_version):
        """Rows at their own positions (the BatchEngine, csrc/batch_engine.h): past_lens_addr points at
        batch int32 lengths. GroupQueryAttention takes seqlens_k per row (each row's rotary position comes
        from its own entry) and total_sequence_length as the longest row after the step."""
        past = np.ctypeslib.as_array((ctypes.c_int32 * batch).from_address(past_lens_addr))
        self._run(first_row, batch, n_tokens, past, None, tokens_addr, logits_addr, kv_version, 1)

    def _run(self, first_row, batch, n_tokens, past_lens, past_len, tokens_addr, logits_addr, kv_version, n_logits):
        engine = self._engine()
        if (kv_version, batch, first_row) != self._kv_key:
            self._bind_kv(engine, batch, first_row)
            self._kv_key = (kv_version, batch, first_row)
        if batch != self._batch:
            self.seqlens = np.zeros(batch, dtype=np.int32)
            self.binding.bind_input("seqlens_k", "cpu", 0, np.int32, [batch], self.seqlens.ctypes.data)
            self.binding.bind_input("total_sequence_length", "cpu", 0, np.int32, [1], self.total.ctypes.data)
            self._batch = batch
        if (batch, n_tokens, tokens_addr) != self._ids_key:
            self.binding.bind_input("input_ids", "cpu", 0, np.int64, [batch, n_tokens], tokens_addr)
            self._ids_key = (batch, n_tokens, tokens_addr)
        rows = n_tokens if self.all_logits else n_logits
        if n_logits != 1 and not self.multi_logits:
            raise ValueError("this model folder predates draft checking: re-convert it (edgeai pull --force)")
        if (batch, rows, logits_addr) != self._logits_key:
            if self.all_logits:  # a perplexity build: logits of every position land in scratch
                self._scratch = np.empty((batch, rows, self.vocab), dtype=np.float32)
                self.binding.bind_output("logits", "cpu", 0, np.float32, [batch, rows, self.vocab],
                                         self._scratch.ctypes.data)
            else:
                self.binding.bind_output("logits", "cpu", 0, np.float32, [batch, rows, self.vocab], logits_addr)
                self.num_logits[0] = rows
            self._logits_key = (batch, rows, logits_addr)
        if past_lens is None:
            self.seqlens[:] = past_len + n_tokens - 1
            self.total[0] = past_len + n_tokens
        else:
            np.add(past_lens, n_tokens - 1, out=self.seqlens)
            self.total[0] = int(self.seqlens.max()) + 1
        t0 = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        self.run_s += time.perf_counter() - t0
        self._rows_fed += batch * n_tokens
        if self._row_spans and self._rows_fed >= self.DROP_EVERY:
            drop_pages(self._row_spans, self._libc)
            self._rows_fed = 0
        if self.all_logits:
            out = np.ctypeslib.as_array((ctypes.c_float * (batch * n_logits * self.vocab)).from_address(logits_addr))
            out[:] = self._scratch[:, -n_logits:, :].reshape(-1)
