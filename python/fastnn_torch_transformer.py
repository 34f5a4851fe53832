"""fastnn's post-norm Transformer encoder block in torch.nn.TransformerEncoderLayer: the weight mapping.

    import sys; sys.path.insert(0, "<repo>/python")
    from fastnn_torch_transformer import encoder_layer_state, load_encoder_layer

A fastnn encoder block (tests/interop/transformer_export.cpp, examples/lang_id.cpp --model transformer) is the
graph
    a = MultiHeadAttention(H, key_dim = d / H)(x, x)          <prefix>mha
    h = LayerNormalization(x + a)                              <prefix>norm1
    y = LayerNormalization(h + Dense(d)(Dense(ff, gelu)(h)))   <prefix>ffn1, <prefix>ffn2, <prefix>norm2
which is torch.nn.TransformerEncoderLayer(d, H, ff, activation="gelu", layer_norm_eps=epsilon, batch_first=True,
norm_first=False) with these parameters (the tensors are named <layer>.<parameter> in fastnn's safetensors files;
hd = d / H; Keras's kernels [d, H, hd] are row-major, so head h holds columns [h hd, (h + 1) hd) of the matrix
[d, H hd], which is the order in which torch splits the projected features into heads):

    self_attn.in_proj_weight [3d, d] = concat(query_kernel.reshape(d, d).T, key_kernel..., value_kernel...)
    self_attn.in_proj_bias [3d]      = concat(query_bias.reshape(d), key_bias..., value_bias...)
    self_attn.out_proj.weight [d, d] = output_kernel.reshape(d, d).T     (output_kernel [H, hd, d])
    self_attn.out_proj.bias [d]      = output_bias
    norm1.weight, norm1.bias         = <prefix>norm1.gamma, .beta  (torch.nn.LayerNorm(d, eps=epsilon))
    linear1.weight [ff, d]           = <prefix>ffn1.kernel.T, linear1.bias = <prefix>ffn1.bias
    linear2.weight [d, ff]           = <prefix>ffn2.kernel.T, linear2.bias = <prefix>ffn2.bias
    norm2.weight, norm2.bias         = <prefix>norm2.gamma, .beta

Both scale the query by 1 / sqrt(hd) after its bias, use the exact (erf) gelu, and give the padded key steps
(torch's key_padding_mask true; fastnn's lengths) probability 0. fastnn outputs 0 for the attention at a padded
query step where torch computes an ordinary row; every other layer is per step, so the real steps agree and the
padded ones are to be ignored. Shared by tests/interop/torch_interop_transformer.py and bench/lang_id_peer.py.
"""


class MappingError(ValueError):
    """A tensor missing from the file or of an unexpected shape."""


def _get(w, name, shape):
    if name not in w:
        raise MappingError(f"no tensor '{name}' (the file has {len(w)}: {', '.join(sorted(w)[:12])}...)")
    a = w[name]
    if list(a.shape) != list(shape):
        raise MappingError(f"'{name}' is {list(a.shape)}, expected {list(shape)}")
    return a


def encoder_layer_state(w, prefix, d, heads, ff, np, qkv_order=(0, 1, 2), head_major=True):
    """The state_dict (numpy arrays) of torch.nn.TransformerEncoderLayer for fastnn's block `prefix` in the
    weights `w` (name -> numpy array). qkv_order and head_major exist for self-checks that must fail: another
    order of the query, key and value projections in in_proj, or the heads read as the minor axis of the
    kernels."""
    if d % heads:
        raise MappingError(f"d {d} is not a multiple of heads {heads}")
    hd = d // heads

    def proj(kind):  # kernel [d, H, hd] -> [d, d] with head h in columns [h hd, (h + 1) hd)
        k = _get(w, f"{prefix}mha.{kind}_kernel", [d, heads, hd])
        b = _get(w, f"{prefix}mha.{kind}_bias", [heads, hd])
        if not head_major:
            k, b = k.transpose(0, 2, 1), b.T
        return k.reshape(d, d).T, b.reshape(d)

    qkv = [proj(k) for k in ("query", "key", "value")]
    qkv = [qkv[i] for i in qkv_order]
    out = _get(w, f"{prefix}mha.output_kernel", [heads, hd, d])
    s = {
        "self_attn.in_proj_weight": np.concatenate([p[0] for p in qkv], axis=0),
        "self_attn.in_proj_bias": np.concatenate([p[1] for p in qkv], axis=0),
        "self_attn.out_proj.weight": out.reshape(d, d).T,
        "self_attn.out_proj.bias": _get(w, f"{prefix}mha.output_bias", [d]),
        "linear1.weight": _get(w, f"{prefix}ffn1.kernel", [d, ff]).T,
        "linear1.bias": _get(w, f"{prefix}ffn1.bias", [ff]),
        "linear2.weight": _get(w, f"{prefix}ffn2.kernel", [ff, d]).T,
        "linear2.bias": _get(w, f"{prefix}ffn2.bias", [d]),
    }
    for n in ("norm1", "norm2"):
        s[f"{n}.weight"] = _get(w, f"{prefix}{n}.gamma", [d])
        s[f"{n}.bias"] = _get(w, f"{prefix}{n}.beta", [d])
    return {k: np.ascontiguousarray(v) for k, v in s.items()}


def load_encoder_layer(layer, w, prefix, np, torch, **kw):
    """Copies fastnn's block `prefix` of the weights `w` into `layer` (a torch.nn.TransformerEncoderLayer built
    with batch_first=True, norm_first=False, activation="gelu"), every parameter of it exactly once; returns the
    number of values copied."""
    d = layer.self_attn.embed_dim
    heads = layer.self_attn.num_heads
    ff = layer.linear1.out_features
    state = encoder_layer_state(w, prefix, d, heads, ff, np, **kw)
    params = dict(layer.named_parameters())
    if set(params) != set(state):
        raise MappingError(f"torch's layer has parameters {sorted(set(params) - set(state))} that the mapping does "
                           f"not fill, and the mapping {sorted(set(state) - set(params))} that the layer lacks")
    n = 0
    with torch.no_grad():
        for name, value in state.items():
            p = params[name]
            if list(p.shape) != list(value.shape):
                raise MappingError(f"{prefix}: torch's {name} is {list(p.shape)}, the mapping gives "
                                   f"{list(value.shape)}")
            p.copy_(torch.from_numpy(value).to(p.dtype))
            n += value.size
    return n
