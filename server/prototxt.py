"""The data layers of a Caffe net prototxt, read without Caffe.

NOTE [ Reading a prototxt ]
A prototxt is a ``NetParameter`` in protobuf text format. zfeed needs only
its data layers, and real nets often hold layers of Caffe forks that no one
``caffe.proto`` describes, so reading happens in two steps:

1. ``scan_net`` tokenizes the whole text (strings, comments, ``{ }``/``< >``
   blocks, lists) and records where each top-level ``layer { ... }`` block
   starts and ends, with its ``name`` and ``type``. Nothing else is
   interpreted, so any layer type of any fork passes through.
2. ``parse_layer`` parses one data layer's block strictly, with protobuf's
   own text-format parser and the messages of ``server.caffe_proto``: same
   escapes, enums, defaults and errors as Caffe's parser, and a misspelt
   field in a data layer is an error, as in Caffe.

The spans let ``server.tools.rewrite_prototxt`` replace data layers and keep
every other byte of the file (comments included).

Which layers a phase runs follows Caffe's ``Net::FilterNet`` and
``StateMeetsRule``: a layer without ``include`` rules runs unless an
``exclude`` rule matches the net state; a layer with ``include`` rules runs
when one matches. A rule matches when its phase (if set) is the state's,
the state's level is within ``min_level``/``max_level`` (if set), every
``stage`` is among the state's stages and no ``not_stage`` is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from google.protobuf import text_format

from server.caffe_proto import LayerParameter, NetState

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data")
TRAIN, TEST = "train", "test"
_PHASE_ENUM = {TRAIN: 0, TEST: 1}
_PHASE_NAME = {0: "TRAIN", 1: "TEST"}


class PrototxtError(ValueError):
    """The prototxt cannot be used; the message names the file, the line and the layer."""


@dataclass(frozen=True)
class LayerBlock:
    """Where one top-level ``layer { ... }`` sits in the text."""

    index: int  # position among the net's layers
    start: int  # offset of the ``layer`` keyword
    end: int  # offset just past the closing brace
    body_start: int  # offset just past the opening brace
    body_end: int  # offset of the closing brace
    line: int  # 1-based line of the ``layer`` keyword
    name: str
    type: str


@dataclass(frozen=True)
class NetText:
    path: str
    text: str
    layers: List[LayerBlock]
    state: Optional[Tuple[int, int, int]]  # body span and line of a top-level ``state { }``


@dataclass(frozen=True)
class DataLayer:
    """A data layer the net runs in the requested state, parsed."""

    path: str
    block: LayerBlock
    param: LayerParameter

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def tops(self) -> Tuple[str, ...]:
        return tuple(self.param.top)

    def where(self) -> str:
        return "%s:%d layer %r (%s)" % (self.path, self.block.line, self.name, self.type)


# -- step 1: tokens and blocks ------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+\-]+)
  | (?P<punct>[{}<>\[\]:,;])
""", re.VERBOSE)
_CLOSERS = {"{": "}", "<": ">"}
_OPENERS = ("{", "<", "[")
# Blocks and lists nest this deep at most: far beyond any real net (Caffe's messages nest a few
# levels), and well within Python's recursion limit, which the scanner's recursion must not reach.
MAX_NESTING = 100


@dataclass
class _Token:
    kind: str
    text: str
    start: int
    end: int


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _tokens(text: str, path: str) -> List[_Token]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PrototxtError("%s:%d: unexpected character %r"
                                % (path, _line_of(text, position), text[position]))
        if match.lastgroup not in ("space", "comment"):
            tokens.append(_Token(match.lastgroup, match.group(), match.start(), match.end()))
        position = match.end()
    return tokens


def _unquote(token: _Token) -> str:
    if token.kind != "string":
        return token.text
    body = token.text[1:-1]
    if "\\" not in body:
        return body
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


class _Scanner:
    """Walks a token list as text format: ``name [:] value`` fields, blocks nested."""

    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.tokens = _tokens(text, path)
        self.position = 0
        self.depth = 0

    def error(self, message: str, token: Optional[_Token] = None) -> PrototxtError:
        offset = token.start if token is not None else len(self.text)
        return PrototxtError("%s:%d: %s" % (self.path, _line_of(self.text, offset), message))

    def peek(self) -> Optional[_Token]:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of file (an unclosed '{'?)")
        self.position += 1
        return token

    def fields(self, closer: Optional[str]):
        """Yield ``(name_token, value)`` for each field until ``closer``; value is
        ``("block", open_token, close_token, children)`` or ``("scalar", tokens)``."""
        while True:
            token = self.peek()
            if token is None:
                if closer is not None:
                    raise self.error("unexpected end of file: '%s' missing" % closer)
                return
            if token.kind == "punct" and token.text == closer:
                return
            if token.kind == "punct" and token.text in ",;":
                self.take()
                continue
            name = self.take()
            if name.kind != "word":
                raise self.error("expected a field name, found %r" % name.text, name)
            if self.peek() is not None and self.peek().text == ":":
                self.take()
            yield name, self.value()

    def value(self):
        token = self.take()
        if token.kind == "punct" and token.text in _OPENERS:
            if self.depth == MAX_NESTING:
                raise self.error("blocks nested more than %d deep: not a Caffe net" % MAX_NESTING, token)
            self.depth += 1
            try:
                return self._nested(token)
            finally:
                self.depth -= 1
        if token.kind == "punct":
            raise self.error("expected a value, found %r" % token.text, token)
        parts = [token]
        while token.kind == "string" and self.peek() is not None and self.peek().kind == "string":
            parts.append(self.take())  # adjacent strings concatenate
        return ("scalar", parts)

    def _nested(self, opener: _Token):
        """The block or list that ``opener`` opens, up to its closer."""
        if opener.text in _CLOSERS:
            children = list(self.fields(_CLOSERS[opener.text]))
            return ("block", opener, self.take(), children)
        items = []
        while self.peek() is not None and self.peek().text != "]":
            if self.peek().text == ",":
                self.take()
                continue
            items.append(self.value())
        self.take()
        return ("list", items)


def _scalar(children, field: str) -> str:
    for name, value in children:
        if name.text == field and value[0] == "scalar":
            return "".join(_unquote(t) for t in value[1])
    return ""


def scan_net(text: str, path: str) -> NetText:
    """Find the top-level layer blocks (and ``state``) of a NetParameter text."""
    scanner = _Scanner(text, path)
    layers, state = [], None
    for name, value in scanner.fields(None):
        if name.text == "layers":
            raise scanner.error("the net uses Caffe's old V1 'layers' format: upgrade it first "
                                "(Caffe's upgrade_net_proto_text tool), then use the 'layer' blocks it writes",
                                name)
        if value[0] != "block" or name.text not in ("layer", "state"):
            continue
        _, opener, closer, children = value
        if name.text == "state":
            state = (opener.end, closer.start, _line_of(text, opener.end))
            continue
        layers.append(LayerBlock(
            index=len(layers), start=name.start, end=closer.end, body_start=opener.end,
            body_end=closer.start, line=_line_of(text, name.start),
            name=_scalar(children, "name"), type=_scalar(children, "type")))
    return NetText(path, text, layers, state)


def read_net(path: str) -> NetText:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise PrototxtError("cannot read prototxt %s: %s" % (path, exc.strerror)) from None
    except UnicodeDecodeError as exc:
        raise PrototxtError("prototxt %s is not UTF-8 text: %s" % (path, exc)) from None
    return scan_net(text, path)


# -- step 2: strict parsing of one block ------------------------------------------------------

def _parse_block(net: NetText, body: Tuple[int, int], line: int, message, what: str):
    try:
        return text_format.Parse(net.text[body[0]:body[1]], message)
    except text_format.ParseError as exc:
        relative = exc.GetLine() if exc.GetLine() is not None else 1
        detail = str(exc).split(" : ", 1)[-1]
        raise PrototxtError("%s:%d: %s: %s" % (net.path, line + relative - 1, what, detail)) from None


def parse_layer(net: NetText, block: LayerBlock) -> LayerParameter:
    """The block's LayerParameter; PrototxtError for anything Caffe's parser would refuse
    or a field that a data layer does not take."""
    what = "layer %r (%s)" % (block.name, block.type)
    layer = _parse_block(net, (block.body_start, block.body_end),
                         _line_of(net.text, block.body_start), LayerParameter(), what)
    if len(layer.include) and len(layer.exclude):
        raise PrototxtError("%s:%d: %s: has both include and exclude rules; Caffe takes one or the other"
                            % (net.path, block.line, what))
    return layer


def net_state(net: NetText, phase: str, level: Optional[int] = None,
              stages: Sequence[str] = ()) -> NetState:
    """The state Caffe's solver gives the net: ``phase``, then the prototxt's own
    ``state``, then ``level`` and ``stages`` (the solver's train_state/test_state)."""
    state = NetState(phase=_PHASE_ENUM[phase])
    if net.state is not None:
        start, end, line = net.state
        state.MergeFrom(_parse_block(net, (start, end), line, NetState(), "state"))
    if level is not None:
        state.level = level
    state.stage.extend(stages)
    return state


def state_meets_rule(state: NetState, rule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def layer_runs(layer: LayerParameter, state: NetState) -> bool:
    """Whether Caffe's FilterNet keeps ``layer`` in a net of ``state``."""
    if len(layer.include):
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def data_layers(net: NetText, state: NetState) -> List[DataLayer]:
    """The Data, ImageData and HDF5Data layers the net runs in ``state``."""
    found = []
    for block in net.layers:
        if block.type in DATA_LAYER_TYPES:
            layer = parse_layer(net, block)
            if layer_runs(layer, state):
                found.append(DataLayer(net.path, block, layer))
    return found


def select_data_layer(path: str, phase: str, name: str = "", level: Optional[int] = None,
                      stages: Sequence[str] = ()) -> DataLayer:
    """The one data layer of ``path`` that runs in ``phase`` (the one called ``name`` if given)."""
    net = read_net(path)
    state = net_state(net, phase, level, stages)
    candidates = data_layers(net, state)
    phase_name = _PHASE_NAME[state.phase]
    if name:
        named = [layer for layer in candidates if layer.name == name]
        if named:
            return named[0]
        others = [block for block in net.layers if block.name == name]
        if others and others[0].type not in DATA_LAYER_TYPES:
            raise PrototxtError("%s:%d: layer %r is a %s layer; zfeed serves %s layers"
                                % (path, others[0].line, name, others[0].type or "typeless",
                                   ", ".join(DATA_LAYER_TYPES)))
        if others:
            raise PrototxtError("%s:%d: layer %r does not run in phase %s (see its include/exclude rules)"
                                % (path, others[0].line, name, phase_name))
        raise PrototxtError("%s has no layer named %r" % (path, name))
    if not candidates:
        kinds = sorted({block.type for block in net.layers if block.type})
        raise PrototxtError("%s has no %s layer for phase %s (its layer types: %s)"
                            % (path, ", ".join(DATA_LAYER_TYPES), phase_name, ", ".join(kinds) or "none"))
    if len(candidates) > 1:
        raise PrototxtError("%s has %d data layers for phase %s (%s): one zfeed server serves one layer, "
                            "choose it with --layer NAME"
                            % (path, len(candidates), phase_name,
                               ", ".join("%r" % layer.name for layer in candidates)))
    return candidates[0]
