"""ONNX operators that TensorRT's ONNX parser supports.

Source: the operator support matrix of the ONNX-TensorRT parser,
``docs/operators.md`` of the onnx/onnx-tensorrt repository, revision for
TensorRT 10.15 ("TensorRT 10.15 supports operators in the inclusive range of
opset 9 to opset 24"). The TensorRT 10.0 revision of the same file gives opset
9 to 20, so graphs exported at opset <= 20 (semimoe uses 18) are in range for
every TensorRT 10.x. Transcribed by hand from the table (operator names with
"Y"); operators marked "N" are listed in :data:`UNSUPPORTED` for clearer
messages. Restrictions that matter for semimoe's graphs are in
:data:`RESTRICTIONS`.

This is a static list: the test that uses it checks names, not every
restriction (e.g. it cannot see whether a Resize uses a supported mode; the
exporter emits nearest/asymmetric ``Resize`` for ``F.interpolate(scale_factor=2,
mode="nearest")``, which the matrix lists as supported).
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, List

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)
OPSET_RANGE_TRT10_0 = (9, 20)

SUPPORTED: FrozenSet[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual
Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization
RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

UNSUPPORTED: FrozenSet[str] = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im
CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det
DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

RESTRICTIONS: Dict[str, str] = {
    "MaxPool": "2D or 3D pooling only; Indices output unsupported; dilations empty or all ones",
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
    "Resize": "modes nearest/linear; transformation modes half_pixel, pytorch_half_pixel, "
              "tf_half_pixel_for_nn, asymmetric, align_corners; no antialiasing",
    "ReduceMean": "axes must be an initializer",
    "Dropout": "is_training must be an initializer evaluating to False",
    "Squeeze": "axes must be resolvable to a constant",
    "Unsqueeze": "axes must be resolvable to a constant",
}


def unsupported_ops(op_types: Iterable[str], domains: Dict[str, str] = None) -> List[str]:
    """Operator types (default ONNX domain) that are not in :data:`SUPPORTED`.

    ``domains`` maps op type -> domain; ops of a non-default domain (custom
    ops, ``com.microsoft``...) are always reported, TensorRT would need a plugin.
    """
    bad = set()
    for op in op_types:
        dom = (domains or {}).get(op, "")
        if dom not in ("", "ai.onnx") or op not in SUPPORTED:
            bad.add(op if dom in ("", "ai.onnx") else f"{dom}::{op}")
    return sorted(bad)


def check_onnx_model(model) -> List[str]:
    """Unsupported operators of an ``onnx.ModelProto`` (including subgraphs and
    local functions); ``[]`` when TensorRT's parser knows every one."""
    ops: Dict[str, str] = {}

    def visit(graph):
        for node in graph.node:
            ops.setdefault(node.op_type, node.domain)
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    local = {f.name for f in model.functions}
    for f in model.functions:
        for node in f.node:
            ops.setdefault(node.op_type, node.domain)
    return [op for op in unsupported_ops(ops, ops) if op.split("::")[-1] not in local]
