"""heteropass IR: graphs, types, the op table, printer/parser, verifier and reference interpreter."""

from .graph import Graph, Node, Value
from .interpreter import Interpreter, InterpreterError, run_graph
from .ops import OPS, Attr, OpDef, OpError, get_op, register
from .parser import ParseError, parse_graph
from .printer import format_graph, format_node
from .types import DType, TensorType
from .verifier import VerificationError, verify

__all__ = [
    "OPS", "Attr", "DType", "Graph", "Interpreter", "InterpreterError", "Node", "OpDef", "OpError",
    "ParseError", "TensorType", "Value", "VerificationError", "format_graph", "format_node", "get_op",
    "parse_graph", "register", "run_graph", "verify",
]
