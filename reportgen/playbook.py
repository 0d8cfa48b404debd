"""The playbook: what to do about each segment, and how much revenue rides on doing it.

Every one of the 11 segment names has a default entry written for a marketing manager (objective,
channel, offer, an offer that costs no margin, timing, the KPI to watch and the control group to
keep). `playbook:` in the YAML overrides any field of any entry; a name outside the vocabulary is
refused, because a misspelt override would otherwise be silently ignored.

Revenue at stake (see `REVENUE_AT_STAKE_DEFINITION`) turns the entries into a ranked list: the
segments with the most money riding on an action come first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

import polars as pl

from .config import PlaybookEntry
from .errors import ConfigError

log = logging.getLogger(__name__)

SEGMENT_NAMES = (
    "Champions",
    "Loyal Customers",
    "Potential Loyalist",
    "New Customers",
    "Promising",
    "Need Attention",
    "About To Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)
FIELDS = ("objective", "channel", "offer", "no_discount_offer", "timing", "kpi", "holdout")

Kind = Literal["protect", "grow", "retain", "win_back"]
KINDS: dict[str, Kind] = {
    "Champions": "protect",
    "Loyal Customers": "protect",
    "Potential Loyalist": "grow",
    "New Customers": "grow",
    "Promising": "grow",
    "Need Attention": "retain",
    "About To Sleep": "retain",
    "At Risk": "retain",
    "Can't Lose Them": "retain",
    "Hibernating": "win_back",
    "Lost": "win_back",
}
# A growth segment's target: the segment its customers should move up to.
NEXT_UP = {
    "Potential Loyalist": "Loyal Customers",
    "New Customers": "Potential Loyalist",
    "Promising": "Potential Loyalist",
}

REVENUE_AT_STAKE_DEFINITION = (
    "Revenue at stake is the money riding on acting on a segment. For segments to protect, "
    "retain or win back (Champions, Loyal Customers, Need Attention, About To Sleep, At Risk, "
    "Can't Lose Them, Hibernating, Lost) it is the segment's revenue in the period: what leaves "
    "with these customers if they lapse, or what winning them back would restore. For segments "
    "to grow (Potential Loyalist, New Customers, Promising) it is the extra revenue if every "
    "customer spending less than the median customer of the next segment up (Loyal Customers "
    "for Potential Loyalist; Potential Loyalist for New Customers and Promising) spent that "
    "median. It measures exposure, not a forecast: the holdout group shows how much of it an "
    "action actually moves."
)

_HOLDOUT = (
    "Before sending, set aside a random 10% of the segment (at least 100 customers when the "
    "segment allows) who get none of these messages; after {window}, compare {metric} between "
    "the contacted customers and this control group. The difference is what the action earned."
)

DEFAULT_PLAYBOOK: dict[str, dict[str, str]] = {
    "Champions": {
        "objective": "Keep your best customers buying at their current pace and make them "
        "advocates, without teaching them to wait for discounts.",
        "channel": "Personal email signed by a named person, plus an early-access list; keep "
        "them out of mass promotional sends.",
        "offer": "Early access to new ranges and restocks 48 hours before everyone else, and a "
        "thank-you gift with their next order.",
        "no_discount_offer": "VIP status at no price cut: free express delivery, a priority "
        "service line and first pick of limited stock.",
        "timing": "With each new range or restock; at most two contacts a month.",
        "kpi": "Share of the segment ordering again within 60 days, and revenue per customer.",
        "holdout": _HOLDOUT.format(
            window="90 days", metric="repeat-order rate and revenue per customer"
        ),
    },
    "Loyal Customers": {
        "objective": "Raise order frequency and basket size of regular buyers and move them up "
        "to Champions.",
        "channel": "Email and app push, personalised by the categories they last bought.",
        "offer": "Cross-sell bundles from categories they have not bought yet; double loyalty "
        "points on a second order within 30 days.",
        "no_discount_offer": "A lower free-delivery threshold for members, personalised "
        "recommendations and a members-only preview of new products.",
        "timing": "Two to three weeks after each order, before their usual gap between orders "
        "runs out; at most weekly.",
        "kpi": "Orders per customer over 90 days, and the share that are Champions at the next "
        "run.",
        "holdout": _HOLDOUT.format(window="90 days", metric="orders per customer"),
    },
    "Potential Loyalist": {
        "objective": "Get the next two orders soon, while the habit forms, and move these "
        "recent buyers up to Loyal Customers.",
        "channel": "A three-message email sequence triggered by their last order, plus "
        "retargeting ads on the products they viewed.",
        "offer": "Loyalty programme sign-up with a welcome bonus on the next order, and "
        "recommendations built from their first baskets.",
        "no_discount_offer": "Membership with free returns, and reorder reminders for items "
        "they have already bought.",
        "timing": "Days 7, 21 and 45 after their last order.",
        "kpi": "Share placing another order within 45 days; orders per customer after 90 days.",
        "holdout": _HOLDOUT.format(window="60 days", metric="the share placing another order"),
    },
    "New Customers": {
        "objective": "Turn a first purchase into a second one within 30 days: most customers "
        "who never order twice are never seen again.",
        "channel": "Welcome email series after delivery; SMS only for those who opted in.",
        "offer": "Welcome series (how to use and care for what they bought, best sellers in "
        "that category) with a modest second-order incentive, e.g. 10% off, valid 30 days.",
        "no_discount_offer": "Free delivery on the second order, and a review request with "
        "useful content about what they bought.",
        "timing": "Days 2, 14 and 28 after the first order.",
        "kpi": "Second-order rate within 30 and 60 days of the first order.",
        "holdout": _HOLDOUT.format(window="60 days", metric="second-order rate"),
    },
    "Promising": {
        "objective": "Raise the basket size of recent low spenders and introduce them to your "
        "best sellers.",
        "channel": "Email and social retargeting.",
        "offer": "Bundles of best sellers, and a gift with orders about 20% above their current "
        "average basket.",
        "no_discount_offer": "Free delivery above a threshold just over their average order, "
        "and a curated best-seller selection.",
        "timing": "Two to four weeks after their last order; one reminder a week later.",
        "kpi": "Average order value and the share ordering again within 60 days.",
        "holdout": _HOLDOUT.format(window="60 days", metric="average order value and repeat rate"),
    },
    "Need Attention": {
        "objective": "Re-engage above-average customers who are slipping: get one more order in "
        "the next 30 days.",
        "channel": "Personalised email featuring the categories they bought before; retargeting.",
        "offer": "A time-limited offer on categories they have bought before, e.g. 10-15% for "
        "14 days.",
        "no_discount_offer": "'New in your favourite category' selection, restock alerts and "
        "reorder reminders.",
        "timing": "Now, with one reminder after 10 days.",
        "kpi": "Share ordering within 30 days, and revenue per customer.",
        "holdout": _HOLDOUT.format(window="30 days", metric="the share ordering"),
    },
    "About To Sleep": {
        "objective": "Win one more order cheaply before these below-average customers go "
        "dormant; keep the cost per customer low.",
        "channel": "Automated email only.",
        "offer": "Best sellers and seasonal picks with a small, time-limited incentive (free "
        "delivery or 10% for 14 days).",
        "no_discount_offer": "A seasonal gift guide of popular products.",
        "timing": "Once, when they pass twice their usual gap between orders; one reminder.",
        "kpi": "Share ordering within 30 days, and the cost per customer who orders.",
        "holdout": _HOLDOUT.format(window="30 days", metric="the share ordering"),
    },
    "At Risk": {
        "objective": "Win back customers who used to spend big and often but have gone quiet, "
        "before they are lost for good.",
        "channel": "Personal email, then a phone call or a printed letter for the biggest "
        "spenders of the segment.",
        "offer": "A win-back offer built from their past purchases, e.g. 15% on the next order, "
        "valid 21 days.",
        "no_discount_offer": "Ask what went wrong (a short survey followed up by a person), show "
        "what is new since their last order, free express delivery.",
        "timing": "Start now: three contacts over three weeks.",
        "kpi": "Share ordering again within 60 days, and the revenue they bring back.",
        "holdout": _HOLDOUT.format(
            window="60 days", metric="the share ordering and revenue per customer"
        ),
    },
    "Can't Lose Them": {
        "objective": "Recover your former biggest customers one by one: each is worth a "
        "personal effort.",
        "channel": "A phone call or handwritten note from a senior account manager, then email.",
        "offer": "Terms agreed per customer (volume pricing, exclusive products, a dedicated "
        "contact).",
        "no_discount_offer": "A personal call to learn why they stopped, priority service and "
        "first access to new ranges.",
        "timing": "Within 14 days; follow up after 30 days.",
        "kpi": "Customers who order again within 90 days, and the revenue they bring.",
        "holdout": _HOLDOUT.format(
            window="90 days", metric="the share ordering and revenue per customer"
        ),
    },
    "Hibernating": {
        "objective": "Reactivate low-value lapsed customers cheaply, or stop spending on them.",
        "channel": "Low-cost email only; leave them out of paid media audiences.",
        "offer": "Your seasonal sale or clearance announcement with one time-limited offer.",
        "no_discount_offer": "A 'what is new since your last visit' newsletter.",
        "timing": "Quarterly, before your peak seasons.",
        "kpi": "Share ordering within 60 days, unsubscribe rate, and cost per customer who orders.",
        "holdout": _HOLDOUT.format(window="60 days", metric="the share ordering"),
    },
    "Lost": {
        "objective": "One last win-back attempt, then stop mailing them to protect your sender "
        "reputation and budget.",
        "channel": "One email; no paid channels.",
        "offer": "The strongest single offer you can afford, e.g. 20% for 14 days.",
        "no_discount_offer": "A 'we have changed' message with new arrivals and best sellers, "
        "and a link to update their preferences.",
        "timing": "Once; whoever has not responded after 30 days moves to a low-frequency list.",
        "kpi": "Share ordering within 30 days, bounces and unsubscribes.",
        "holdout": _HOLDOUT.format(window="30 days", metric="the share ordering"),
    },
}

_NO_DEFAULT = "No default for this segment name; set it under playbook.{name}.{field}."


@dataclass(frozen=True)
class Play:
    """The playbook entry of one segment name, defaults merged with the YAML overrides."""

    name: str
    kind: Kind
    objective: str
    channel: str
    offer: str
    no_discount_offer: str
    timing: str
    kpi: str
    holdout: str
    overridden: tuple[str, ...]  # the fields the YAML replaced


@dataclass(frozen=True)
class Action:
    """One segment's play with the customers and revenue it concerns."""

    label: int
    segment: str
    customers: int
    revenue_minor: int
    revenue_at_stake_minor: int
    at_stake_basis: str  # how this segment's figure was computed, in one sentence
    play: Play


def unknown_names(names: Iterable[str], extra_valid: Iterable[str] = ()) -> list[str]:
    """The playbook names that are neither one of the 11 names nor in `extra_valid`."""
    valid = set(SEGMENT_NAMES) | set(extra_valid)
    return [n for n in names if n not in valid]


def unknown_names_message(unknown: list[str], extra_valid: Iterable[str] = ()) -> str:
    """The error text for playbook overrides naming no segment."""
    valid = list(SEGMENT_NAMES) + [n for n in extra_valid if n not in SEGMENT_NAMES]
    where = ", ".join(f"playbook.{n}" for n in unknown)
    return (
        f"{where}: not a segment name (names are case-sensitive); valid names: {', '.join(valid)}"
    )


def resolve_playbook(
    overrides: Mapping[str, PlaybookEntry], extra_names: Iterable[str] = ()
) -> dict[str, Play]:
    """Every known name's play, defaults merged with `overrides`; unknown names: ConfigError."""
    extra = [n for n in dict.fromkeys(extra_names) if n not in SEGMENT_NAMES]
    unknown = unknown_names(overrides, extra)
    if unknown:
        raise ConfigError(unknown_names_message(unknown, extra))
    return {name: _merge(name, overrides.get(name)) for name in (*SEGMENT_NAMES, *extra)}


def _merge(name: str, override: PlaybookEntry | None) -> Play:
    given = override.model_dump(exclude_none=True) if override is not None else {}
    default = DEFAULT_PLAYBOOK.get(name, {})
    fields = {
        f: given.get(f, default.get(f, _NO_DEFAULT.format(name=name, field=f))) for f in FIELDS
    }
    overridden = tuple(f for f in FIELDS if f in given)
    return Play(name=name, kind=KINDS.get(name, "retain"), overridden=overridden, **fields)


def plan_actions(
    customers: pl.DataFrame, grid: pl.DataFrame, plays: Mapping[str, Play], digits: int
) -> list[Action]:
    """One Action per segment, in label order.

    `customers`: label, segment, revenue_minor for every clustered customer; `grid`:
    rfm_grid_segment, revenue_minor for the same customers (the fallback growth targets).
    """
    per_segment = (
        customers.group_by("label", "segment")
        .agg(pl.len().alias("customers"), pl.col("revenue_minor").sum())
        .sort("label")
    )
    actions = []
    for row in per_segment.iter_rows(named=True):
        play = plays[row["segment"]]
        stake, basis = _at_stake(row, play, customers, grid, digits)
        actions.append(
            Action(
                row["label"],
                row["segment"],
                row["customers"],
                row["revenue_minor"],
                stake,
                basis,
                play,
            )
        )
    return actions


def _at_stake(
    row: dict, play: Play, customers: pl.DataFrame, grid: pl.DataFrame, digits: int
) -> tuple[int, str]:
    if play.kind != "grow" or play.name not in NEXT_UP:
        what = (
            "what winning these customers back would restore"
            if play.kind == "win_back"
            else "what leaves with these customers if they lapse"
        )
        return row["revenue_minor"], f"the segment's revenue in the period: {what}"
    target_name = NEXT_UP[play.name]
    target, source = _median_spend(target_name, customers, grid)
    if target is None:
        return 0, f"no customer is in {target_name} (segment or RFM grid): no target to grow to"
    spend = customers.filter(pl.col("label") == row["label"])["revenue_minor"]
    uplift = int((target - spend).clip(lower_bound=0).sum())
    shown = f"{target / 10**digits:,.{digits}f}"
    return uplift, (
        f"uplift if every customer below {shown} (the median spend of {target_name}, "
        f"{source}) spent that much"
    )


def _median_spend(name: str, customers: pl.DataFrame, grid: pl.DataFrame) -> tuple[int | None, str]:
    """The median revenue of a segment's customers, else of the RFM grid's customers so named."""
    for frame, column, source in (
        (customers, "segment", "this segmentation"),
        (grid, "rfm_grid_segment", "in the RFM grid"),
    ):
        values = frame.filter(pl.col(column) == name)["revenue_minor"]
        if values.len():
            return _round_half_even(cast(float, values.median())), source
    return None, ""


def _round_half_even(value: float) -> int:
    return round(value)


def rank_actions(actions: Iterable[Action]) -> list[Action]:
    """Actions by revenue at stake, largest first; ties by segment order (label)."""
    return sorted(actions, key=lambda a: (-a.revenue_at_stake_minor, a.label))
