"""How the model asks for experts: two strategies behind one interface.

- :class:`TagProtocol`: the model writes ``[VISION: ...]`` tags (taught by ``protocol.PROTOCOL_PROMPT``);
  results come back as an ``[IMAGE CONTEXT]`` user message.
- :class:`ToolsProtocol`: the experts are offered as native tools (``vision_ocr``...); results come
  back as ``tool`` messages.

Each gives the prompt it teaches, the tools a turn offers, what the tool calls of a reply are (ours to
run, the client's to hand back, malformed, over the cap) and the messages that follow a round. Tags
written under the tools protocol are honoured too: the run loop parses every reply for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experts.errors import VisionRouterError
from experts.registry import Registry
from router.core import protocol as tag_text
from router.core import toolspec
from router.core.messages import Message, ToolCall, assistant, call_name, echo_call, tool_result, user


@dataclass
class OurCall:
    """A native call to one of our experts, checked: which expert, its arguments, which images."""

    call: ToolCall
    expert: str
    args: dict[str, Any]
    images: list[int]


@dataclass
class SortedCalls:
    """The native tool calls of one reply, sorted."""

    ours: list[OurCall] = field(default_factory=list)
    client: list[ToolCall] = field(default_factory=list)  # handed back to the client, unexecuted
    bad: list[tuple[ToolCall, str]] = field(default_factory=list)  # answered with an error
    skipped: list[tuple[ToolCall, str]] = field(default_factory=list)  # over the per-reply cap
    ignored: list[str] = field(default_factory=list)  # calls to tools this turn did not offer

    @property
    def answered(self) -> list[ToolCall]:
        """Our calls that get a ``tool`` message back, in reply order."""
        return [c.call for c in self.ours] + [c for c, _ in self.bad] + [c for c, _ in self.skipped]


@dataclass
class CallRules:
    """What a reply's tool calls are checked against."""

    registry: Registry
    client_names: set[str]
    images: int  # attached images
    latest: list[int]  # the default target: the newest user message's images
    room: int  # how many more expert requests this reply may make (the per-reply cap)


def taught(registry: Registry) -> dict[str, str]:
    """The experts a prompt teaches: those that can run here (name -> description)."""
    return {n: registry.expert_class(n).description for n in registry.runnable()}


class Protocol:
    """The interface of both strategies."""

    name = ""
    offers_tools = False
    prompt = ""  # the prompt for the default experts (the Modelfile's set); what a run sends: prompt_for()

    def prompt_for(self, experts: Mapping[str, str]) -> str:
        """The system prompt that teaches this way of asking for ``experts`` (name -> description)."""
        raise NotImplementedError

    def tools_for_turn(
        self, registry: Registry, client_tools: Sequence[Mapping[str, Any]], final: bool
    ) -> list[Mapping[str, Any]]:
        """Ours (unless this is the last round) merged with the client's; ours win a name clash."""
        ours = toolspec.ollama_tools(registry) if self.offers_tools and not final else []
        names = {t["function"]["name"] for t in ours}
        return ours + [t for t in client_tools if tool_name_of(t) not in names]

    def sort_calls(self, calls: Sequence[ToolCall], reply: str, rules: CallRules, final: bool) -> SortedCalls:
        """Split one reply's native tool calls: ours to run, the client's to hand back, malformed ones
        (answered with an error) and those over the cap (answered as skipped)."""
        out = SortedCalls()
        offered = self.offers_tools and not final
        for call in calls:
            name = call_name(call)
            expert = toolspec.expert_for_tool(name, rules.registry)
            if expert is not None and (offered or name not in rules.client_names):
                if not offered:
                    out.ignored.append(f"tool call {name} (vision tools not offered)")
                elif len(out.ours) >= rules.room:
                    out.skipped.append((call, "skipped: too many expert requests in one reply"))
                else:
                    _check(call, expert, rules, out)
            elif rules.client_names:
                # Not ours: back to the client unexecuted, as Ollama would return it (also a name the
                # client did not define: the client decides what to do with it).
                out.client.append(call)
            elif offered:
                out.bad.append((call, f"unknown tool {name!r}"))
            else:
                out.ignored.append(f"tool call {name} (no tools offered)")
        if offered and not calls and "<tool_call>" in reply:
            out.bad.append((ToolCall(function=ToolCall.Function(name="?", arguments={})), "tool call written as text"))
        return out

    def follow_up(
        self, reply: str, sorted_calls: SortedCalls, tool_answers: Sequence[str], context: str | None, last: bool
    ) -> list[Message]:
        """The messages after a round of experts: the model's reply, then the results."""
        answered = sorted_calls.answered
        if not answered:
            follow = tag_text.LAST_ROUND if last else tag_text.FOLLOW_UP
            return [assistant(reply), user(f"{context}\n\n{follow}")]
        out = [assistant(reply, [echo_call(c) for c in answered])]
        out += [tool_result(call_name(c), text) for c, text in zip(answered, tool_answers, strict=True)]
        if context:  # tags written alongside the calls still get their answer
            out.append(user(f"{context}\n\n{tag_text.FOLLOW_UP}"))
        return out


class TagProtocol(Protocol):
    name = "tags"
    prompt = tag_text.PROTOCOL_PROMPT

    def prompt_for(self, experts: Mapping[str, str]) -> str:
        return tag_text.tag_prompt(experts)


class ToolsProtocol(Protocol):
    name = "tools"
    offers_tools = True
    prompt = toolspec.TOOLS_PROMPT

    def prompt_for(self, experts: Mapping[str, str]) -> str:
        return toolspec.tools_prompt(dict(experts))


TAGS = TagProtocol()
TOOLS = ToolsProtocol()


def protocol_needed(mode: str, modelfile: str | None, has_system: bool, prompt: str) -> bool:
    """Whether ``prompt`` is sent as a system message: ``always``, ``never``, or ``auto``: unless the model's
    SYSTEM (its Modelfile) is this very prompt (the same experts taught) and no client system message
    replaces it."""
    if mode == "never":
        return False
    if mode == "always":
        return True
    return has_system or prompt.strip() not in (modelfile or "")


def bad_call_notes(sorted_calls: SortedCalls) -> list[str]:
    return [f"tool call {call_name(c)}: {problem}" for c, problem in sorted_calls.bad]


def tool_error(problem: str, registry: Registry) -> str:
    """The ``tool`` message answering a call that could not run."""
    return f"error: {problem}. Available tools: " + ", ".join(toolspec.tool_name(n) for n in registry.runnable())


def tool_name_of(tool: Mapping[str, Any]) -> Any:
    """The function name of a tool definition (None when it has none)."""
    fn = tool.get("function")
    return fn.get("name") if isinstance(fn, Mapping) else None


def _check(call: ToolCall, expert: str, rules: CallRules, out: SortedCalls) -> None:
    problem, images, args = check_tool_args(expert, call.function.arguments, rules)
    if problem:
        out.bad.append((call, problem))
    else:
        out.ours.append(OurCall(call, expert, args, images))


def check_tool_args(expert: str, args: Any, rules: CallRules) -> tuple[str | None, list[int], dict[str, Any]]:
    """``(problem, target images, expert args)`` for one call's arguments."""
    if isinstance(args, str):  # some models send the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return f"arguments are not JSON: {args[:80]!r}", [], {}
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        return "arguments are not an object", [], {}
    args = {k: v for k, v in args.items() if v is not None}
    image = args.pop(toolspec.IMAGE_ARG, None)
    targets = list(rules.latest)
    if image is not None:
        try:
            idx = int(image)
        except (TypeError, ValueError):
            return f"image must be a number, got {image!r}", [], {}
        if not 1 <= idx <= rules.images:
            return f"there is no image {idx}; {rules.images} image(s) are attached", [], {}
        targets = [idx]
    try:
        rules.registry.get(expert).parse_args(args)
    except VisionRouterError as exc:
        return str(exc), [], {}
    return None, targets, args
