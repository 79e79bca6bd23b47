"""The model as a layer graph (networkx): what the pipeline partitioner cuts.

Nodes are the executor's module names — ``embed``, ``layers.0`` … ``layers.{L-1}``,
``final_norm``, ``lm_head`` — and carry, **per rank** of the split given by ``parallel`` (tensor
parallel shards weights and most activations, context parallel splits the sequence) and **per
micro-batch**:

* ``flops``: forward FLOPs (planner.cost.flops convention: 2*m*n*k per matmul, attention core as a
  full s x s product, element-wise ops 0 — so ``embed`` and ``final_norm`` have 0 FLOPs);
* ``params`` and ``weight_bytes``: parameters held by the rank, and their bytes in the weight dtype;
* ``activation_bytes``: activations kept for backward (Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", Sec. 4, Table 2 — see
  :func:`block_activation_bytes`);
* ``time_s``: forward time, from ``cost_fn(name, attrs)`` when given, else ``flops / flops_per_s``
  (flops-proportional; with the default ``flops_per_s=1`` it is in relative units, which is all
  the partitioner needs);
* ``kind`` (``embed``/``layer``/``norm``/``head``/...) and ``order`` (build order, a topological
  order used to break ties).

Edges carry ``bytes``: the activation one rank sends forward per micro-batch,
``s_local * b * h * bytes_per_elem`` (``s_local = s / cp``; divided by tp under sequence
parallelism, where each tp rank holds a 1/tp slice of the sequence).

Besides the decoder chain (:func:`layer_graph`), :func:`encoder_decoder_graph` (cross-attention
from every decoder layer to the encoder output) and :func:`vision_decoder_graph` (a vision tower
and projector feeding the decoder's first layer) build general DAGs for
:func:`planner.partition.partition_dag`.
"""
from __future__ import annotations

from typing import Callable

import networkx as nx

from planner.cost.flops import head_forward_flops, layer_forward_flops
from planner.model import ModelSpec
from planner.plan import ParallelConfig

CostFn = Callable[[str, dict], float]
MASK_BYTES = 1  # dropout masks are 1 byte per element (Korthikanti et al. 2022, Sec. 4.1)


def activation_elem_bytes(precision: str) -> int:
    """Bytes per stored activation element: 4 for fp32, else 2 (bf16/fp16; fp8 recipes keep
    activations for backward in 16 bit)."""
    return 4 if precision == "fp32" else 2


def weight_elem_bytes(precision: str) -> int:
    """Bytes per compute-copy weight element: 4 for fp32, else 2."""
    return 4 if precision == "fp32" else 2


def block_activation_bytes(model: ModelSpec, parallel: ParallelConfig, *, seq_len: int | None = None,
                           kv_len: int | None = None) -> float:
    """Activation bytes one transformer block keeps for backward, per micro-batch, per rank.

    Korthikanti et al. 2022, Sec. 4.1 (eq. 1) and Table 2, written term by term so that it holds
    for GQA, SwiGLU and MoE and reduces exactly to the paper for a GPT (MHA, GELU, f = 4h,
    dropout, 2-byte activations, 1-byte masks):

    * replicated over tp (sliced by tp under sequence parallelism): 2 LayerNorm inputs, the QKV
      input and the MLP input (e*sbh each) and, with dropout, 2 masks (sbh each) -> 10·sbh;
    * sharded over tp: Q, K (e*sb(q+kv)), V (e*sb*kv), projection input (e*sb*q) and the MLP
      intermediates (GELU: input and output of the activation, 2*e*sbf; SwiGLU: gate, up, SiLU
      output and product, 4*e*sbf; times top_k for MoE) -> 24·sbh for a GPT;
    * attention scores (sharded over tp): softmax output e*a*s*s_kv*b, and with dropout the mask
      and the dropout output (1 + e)*a*s*s_kv*b -> 5·a·s²·b for a GPT.

    Hence no parallelism: ``s·b·h·(34 + 5·a·s/h)``; tensor parallel t:
    ``s·b·h·(10 + 24/t + 5·a·s/(h·t))``; with sequence parallel: ``s·b·h/t·(34 + 5·a·s/h)``.
    Selective recomputation drops the score term; full recomputation keeps only the block input,
    ``e·s·b·h`` (2·sbh), sliced by t under sequence parallelism. Context parallelism splits the
    queries: ``s`` is the local sequence ``seq_len / cp`` while keys stay ``kv_len`` long.
    """
    e = activation_elem_bytes(parallel.precision)
    t = parallel.tp
    s_full = seq_len if seq_len is not None else parallel.seq_len
    s = s_full / parallel.cp
    s_kv = kv_len if kv_len is not None else s_full
    b = parallel.micro_batch
    h = model.hidden_size
    sb = s * b
    sp_div = t if parallel.sequence_parallel else 1
    if parallel.recompute == "full":
        return e * sb * h / sp_div
    dropout = model.dropout > 0
    replicated = sb * h * (4 * e + (2 * MASK_BYTES if dropout else 0))
    if model.is_moe:
        mlp_width = model.top_k * model.expert_ffn
    else:
        mlp_width = model.ffn_hidden_size
    mlp_terms = 4 if model.mlp == "swiglu" else 2
    sharded = sb * e * (2 * model.q_dim + 2 * model.kv_dim + mlp_terms * mlp_width)
    total = replicated / sp_div + sharded / t
    if parallel.recompute != "selective":
        scores = model.n_heads * s * s_kv * b * (e + ((MASK_BYTES + e) if dropout else 0))
        total += scores / t
    return total


def _layer_params_per_rank(model: ModelSpec, tp: int) -> float:
    """Block parameters on one tp rank: matrices and biases sharded, the two norms replicated."""
    norms = 2 * model.norm_params()
    return (model.layer_params() - norms) / tp + norms


def _time(name: str, attrs: dict, cost_fn: CostFn | None, flops_per_s: float) -> float:
    if cost_fn is not None:
        return float(cost_fn(name, attrs))
    return attrs["flops"] / flops_per_s


class _Builder:
    """Adds nodes with the common attributes and keeps the build order."""

    def __init__(self, graph: nx.DiGraph, cost_fn: CostFn | None, flops_per_s: float):
        if flops_per_s <= 0:
            raise ValueError("flops_per_s must be > 0")
        self.graph = graph
        self.cost_fn = cost_fn
        self.flops_per_s = flops_per_s

    def node(self, name: str, kind: str, flops: float, params: float, weight_bytes: float,
             activation_bytes: float) -> str:
        attrs = dict(kind=kind, flops=float(flops), params=float(params),
                     weight_bytes=float(weight_bytes), activation_bytes=float(activation_bytes),
                     order=self.graph.number_of_nodes())
        attrs["time_s"] = _time(name, attrs, self.cost_fn, self.flops_per_s)
        self.graph.add_node(name, **attrs)
        return name

    def edge(self, src: str, dst: str, nbytes: float) -> None:
        self.graph.add_edge(src, dst, bytes=float(nbytes))


def _boundary_bytes(model: ModelSpec, parallel: ParallelConfig, seq_len: int) -> float:
    """Activation sent between consecutive blocks: s_local·b·h·e (/tp with sequence parallel)."""
    e = activation_elem_bytes(parallel.precision)
    div = parallel.tp if parallel.sequence_parallel else 1
    return seq_len / parallel.cp * parallel.micro_batch * model.hidden_size * e / div


def _add_decoder_stack(bld: _Builder, model: ModelSpec, parallel: ParallelConfig, prefix: str,
                       seq_len: int, *, head: bool, tied_head_copy: bool,
                       embed_name: str = "embed", cross_from: str | None = None,
                       cross_len: int = 0, cross_bytes: float = 0.0) -> list[str]:
    """embed -> layers.* -> final_norm [-> lm_head]; returns the node names in order."""
    tp, cp, b = parallel.tp, parallel.cp, parallel.micro_batch
    e_w = weight_elem_bytes(parallel.precision)
    e_a = activation_elem_bytes(parallel.precision)
    tokens = seq_len / cp * b
    sp_div = tp if parallel.sequence_parallel else 1
    h = model.hidden_size
    boundary = _boundary_bytes(model, parallel, seq_len)
    names = []

    pos = model.seq_len * h if model.position == "learned" else 0
    embed_params = model.vocab_size * h / tp + pos  # vocab-parallel embedding, positions replicated
    embed_act = tokens * h * MASK_BYTES / sp_div if model.dropout > 0 else 0.0  # embedding dropout mask
    names.append(bld.node(f"{prefix}{embed_name}", "embed", 0.0, embed_params, embed_params * e_w, embed_act))

    layer_flops = layer_forward_flops(model, tokens, seq_len).total / tp
    layer_params = _layer_params_per_rank(model, tp)
    layer_act = block_activation_bytes(model, parallel, seq_len=seq_len)
    cross_params = cross_flops = cross_act = 0.0
    if cross_from is not None:
        # Cross-attention (Vaswani et al. 2017): Q and output projections on the decoder side,
        # K and V projections of the encoder output, and the attention core over cross_len keys.
        cross_params = (h * model.q_dim + model.q_dim * h + 2 * h * model.kv_dim) / tp + model.norm_params()
        cross_flops = (2.0 * tokens * h * 2 * model.q_dim
                       + 2.0 * (cross_len / cp) * b * h * 2 * model.kv_dim
                       + 4.0 * tokens * cross_len * model.q_dim) / tp
        cross_act = (tokens * e_a * (2 * model.q_dim) / tp + tokens * h * 2 * e_a / sp_div
                     + (cross_len / cp) * b * e_a * 2 * model.kv_dim / tp)
        if parallel.recompute == "none":
            cross_act += model.n_heads * tokens * cross_len * e_a / tp
        elif parallel.recompute == "full":
            cross_act = 0.0
    prev = names[0]
    for i in range(model.n_layers):
        name = bld.node(f"{prefix}layers.{i}", "layer", layer_flops + cross_flops,
                        layer_params + cross_params, (layer_params + cross_params) * e_w,
                        layer_act + cross_act)
        bld.edge(prev, name, boundary)
        if cross_from is not None:
            bld.edge(cross_from, name, cross_bytes)
        names.append(name)
        prev = name

    norm = model.norm_params()
    names.append(bld.node(f"{prefix}final_norm", "norm", 0.0, norm, norm * e_w, tokens * h * e_a / sp_div))
    bld.edge(prev, names[-1], boundary)
    if head:
        # Untied: the head's own V x h matrix. Tied with pp > 1: Megatron keeps a copy of the word
        # embedding on the last stage and all-reduces its gradient with the first (Shoeybi et al. 2019).
        head_params = model.vocab_size * h / tp if (not model.tied_embeddings or tied_head_copy) else 0.0
        # Stored: the head's input (e·sbh) and the fp32 logits for the loss (4·sbV/t), Korthikanti Sec. 4.3.
        head_act = tokens * h * e_a / sp_div + tokens * model.vocab_size * 4 / tp
        names.append(bld.node(f"{prefix}lm_head", "head", head_forward_flops(model, tokens) / tp,
                              head_params, head_params * e_w, head_act))
        bld.edge(names[-2], names[-1], boundary)
    return names


def layer_graph(model: ModelSpec, parallel: ParallelConfig, cost_fn: CostFn | None = None,
                flops_per_s: float = 1.0) -> nx.DiGraph:
    """The decoder-only model as a chain ``embed -> layers.0 -> ... -> final_norm -> lm_head``.

    Attributes per node and edge are described in the module docstring. ``graph.graph`` holds
    ``model`` (name), ``chain`` (True: the nodes form one path) and ``parallel`` (dict).
    """
    graph = nx.DiGraph(model=model.name, chain=True, parallel=parallel.to_dict())
    bld = _Builder(graph, cost_fn, flops_per_s)
    _add_decoder_stack(bld, model, parallel, "", parallel.seq_len, head=True,
                       tied_head_copy=parallel.pp > 1)
    return graph


def chain_nodes(graph: nx.DiGraph) -> tuple[str, list[str], list[str]]:
    """Split a :func:`layer_graph` chain into (first-stage node, the layers, last-stage nodes):
    ``("embed", ["layers.0", ...], ["final_norm", "lm_head"])``."""
    order = list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["order"]))
    layers = [n for n in order if graph.nodes[n]["kind"] == "layer"]
    if not layers or order[0] == layers[0]:
        raise ValueError("graph has no layers before/after which to put embed and head")
    first = order[: order.index(layers[0])]
    last = order[order.index(layers[-1]) + 1:]
    if len(first) != 1 or order.index(layers[-1]) - order.index(layers[0]) + 1 != len(layers):
        raise ValueError("not a chain layer graph: expected embed, layers.*, then head nodes")
    return first[0], layers, last


def encoder_decoder_graph(encoder: ModelSpec, decoder: ModelSpec, parallel: ParallelConfig,
                          *, encoder_seq_len: int | None = None, cost_fn: CostFn | None = None,
                          flops_per_s: float = 1.0) -> nx.DiGraph:
    """An encoder-decoder (T5 / original Transformer): ``encoder.embed -> encoder.layers.* ->
    encoder.final_norm`` whose output feeds the cross-attention of **every** decoder layer
    (``decoder.embed -> decoder.layers.* -> decoder.final_norm -> decoder.lm_head``) — a DAG with fan-out.

    The encoder's head is dropped (no LM head); ``encoder_seq_len`` defaults to parallel.seq_len.
    """
    enc_len = encoder_seq_len or parallel.seq_len
    graph = nx.DiGraph(model=f"{encoder.name}+{decoder.name}", chain=False, parallel=parallel.to_dict())
    bld = _Builder(graph, cost_fn, flops_per_s)
    enc = _add_decoder_stack(bld, encoder, parallel, "encoder.", enc_len, head=False, tied_head_copy=False)
    cross_bytes = _boundary_bytes(encoder, parallel, enc_len)
    _add_decoder_stack(bld, decoder, parallel, "decoder.", parallel.seq_len, head=True,
                       tied_head_copy=parallel.pp > 1, cross_from=enc[-1], cross_len=enc_len,
                       cross_bytes=cross_bytes)
    return graph


def vision_decoder_graph(vision: ModelSpec, decoder: ModelSpec, parallel: ParallelConfig, *,
                         image_tokens: int, cost_fn: CostFn | None = None,
                         flops_per_s: float = 1.0) -> nx.DiGraph:
    """A vision-language model (LLaVA style): a ViT tower ``vision.patch_embed ->
    vision.layers.* -> vision.final_norm -> projector`` over ``image_tokens`` patches, whose output
    joins the token embedding at ``layers.0`` of the decoder (``embed -> layers.* -> final_norm
    -> lm_head``): two sources merging — a DAG.

    ``vision.vocab_size`` is read as the flattened patch size (patch_embed is a linear map from it).
    The projector is a 2-layer MLP from the vision width to the decoder width (Liu et al. 2023).
    """
    graph = nx.DiGraph(model=f"{vision.name}+{decoder.name}", chain=False, parallel=parallel.to_dict())
    bld = _Builder(graph, cost_fn, flops_per_s)
    tp, b = parallel.tp, parallel.micro_batch
    e_w = weight_elem_bytes(parallel.precision)
    e_a = activation_elem_bytes(parallel.precision)
    vis = _add_decoder_stack(bld, vision, parallel, "vision.", image_tokens, head=False,
                             tied_head_copy=False, embed_name="patch_embed")
    # patch_embed is a linear map (patch pixels -> width), not a lookup: give it its matmul FLOPs.
    v_tokens = image_tokens / parallel.cp * b
    node = graph.nodes[vis[0]]
    node["flops"] = 2.0 * v_tokens * vision.vocab_size * vision.hidden_size / tp
    node["time_s"] = _time(vis[0], node, cost_fn, flops_per_s)
    hv, hd = vision.hidden_size, decoder.hidden_size
    proj_params = (hv * hd + hd * hd) / tp
    proj_flops = 2.0 * v_tokens * (hv * hd + hd * hd) / tp
    proj_act = v_tokens * e_a * (hv + 2 * hd / tp)
    bld.node("projector", "projector", proj_flops, proj_params, proj_params * e_w, proj_act)
    bld.edge(vis[-1], "projector", _boundary_bytes(vision, parallel, image_tokens))
    dec = _add_decoder_stack(bld, decoder, parallel, "", parallel.seq_len, head=True,
                             tied_head_copy=parallel.pp > 1)
    bld.edge("projector", dec[1], _boundary_bytes(decoder, parallel, image_tokens))
    return graph


def total(graph: nx.DiGraph, key: str) -> float:
    """Sum of a node attribute over the graph."""
    return float(sum(d[key] for _, d in graph.nodes(data=True)))
