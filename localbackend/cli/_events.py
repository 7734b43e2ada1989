"""One readable line for each decision the tuner logs in ``events.jsonl``."""

from __future__ import annotations

from typing import Any

from ._common import format_value
from ._tune_options import TuneOptions


def describe_event(event: dict[str, Any], options: TuneOptions) -> str:
    """One line for the log or the live view."""
    kind = event.get("event")
    trial = event.get("trial")
    attr = options.resource_attr
    metric = options.metric

    def value(key: str = "value") -> str:
        return format_value(event.get(key))

    if kind == "start":
        config = event.get("config", {})
        return f"trial {trial} started: " + " ".join(
            f"{k}={format_value(v)}" for k, v in config.items()
        )
    if kind == "pause":
        return (
            f"trial {trial} paused at rung {attr}={event['rung']:g}: {metric} {value()} is "
            f"{event['rank']} of {event['count']}, not in the top 1/{options.reduction_factor:g} "
            "(yet)"
        )
    if kind == "continue":
        return (
            f"trial {trial} reached rung {attr}={event['rung']:g}: {metric} {value()} is "
            f"{event['rank']} of {event['count']}, goes on to {attr}={event['next']:g}"
        )
    if kind == "promote":
        return (
            f"trial {trial} promoted from rung {attr}={event['rung']:g} ({metric} {value()}, "
            f"now {event['rank']} of {event['count']}): resumed toward {attr}={event['next']:g}"
        )
    if kind == "exploit":
        return (
            f"trial {trial} is in the bottom quantile at {attr}={format_value(event['resource'])} "
            f"({metric} {value()}); pausing it to take trial {event['source']}'s checkpoint "
            f"({metric} {value('source_value')})"
        )
    if kind == "copy":
        changed = " ".join(f"{k}={format_value(v)}" for k, v in event.get("changed", {}).items())
        return (
            f"trial {trial} resumed from a copy of trial {event['source']}'s checkpoint "
            f"({attr} {format_value(event.get('source_resource'))}), generation "
            f"{event['generation']}" + (f", explored {changed}" if changed else "")
        )
    if kind == "yield":
        waiting = [t for t in event.get("behind", []) if t >= 0]
        others = (
            f"trial{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))}"
            if waiting
            else "new trials"
        )
        if waiting and any(t < 0 for t in event.get("behind", [])):
            others += " and new trials"
        return (
            f"trial {trial} paused at {attr}={format_value(event['resource'])} so that {others} "
            "with less progress can run"
        )
    if kind == "turn":
        return f"trial {trial} resumed at {attr}={format_value(event.get('resource'))} (its turn)"
    if kind == "resume_interrupted":
        return f"trial {trial} resumed (it was running when the tune was interrupted)"
    if kind == "best":
        at = f" at {attr} {value('resource')}" if event.get("resource") is not None else ""
        return f"new best: trial {trial} {metric} {value()}{at}"
    if kind == "completed":
        at = f" at {attr} {value('resource')}" if event.get("resource") is not None else ""
        return f"trial {trial} completed: {metric} {value()}{at}"
    if kind == "failed":
        return f"trial {trial} failed ({event['how']}): {event['last']}"
    if kind == "stop":
        why = {
            "request": "on request (localbackend stop)",
            "max_resource": f"past --max-resource {format_value(options.max_resource)}",
        }.get(str(event.get("why")), "")
        return f"trial {trial} stopped {why}".rstrip()
    return ""
