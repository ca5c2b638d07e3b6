"""The pure half of `stateless_serve.py`: its sentences, percentiles, rows, the three targets and the table.

Nothing here times, loads a model or starts a process, so tests can drive it with made-up numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

BATCH = 32  # the in-process batch the served throughput is held against
SENTENCES = (
    "The cat sat on the warm windowsill.",
    "Interest rates rose again this quarter, and mortgage applications fell to their lowest level in a decade.",
    "How do I reverse a linked list in place?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Please bring two bags of flour, a dozen eggs and some butter when you come over on Saturday morning.",
    "The train to Edinburgh leaves at nine.",
    "She played the cello in a small orchestra that toured the coastal towns every summer for almost twenty "
    "years, long after the other founding members had retired.",
    "Is it safe to run a dishwasher overnight?",
    "A compiler translates source code into machine instructions before the program runs.",
    "My laptop battery drains quickly even when the screen is off.",
    "The museum's new wing displays pottery from the Bronze Age.",
    "Wildfires spread faster on steep slopes because the flames preheat the fuel uphill.",
    "Can you recommend a good book about the history of mathematics?",
    "The referee blew the whistle just before the ball crossed the line.",
    "Quantum computers use qubits, which can hold a superposition of states, to explore many possibilities at once "
    "for certain classes of problems.",
    "Drink more water when it is hot.",
    "The committee postponed the vote until every member had read the full report.",
    "Our flight was delayed by three hours because of a storm over the Atlantic.",
    "What is the difference between a virus and a bacterium?",
    "He repaired the old bicycle with parts from a scrapyard.",
    "The recipe calls for fresh basil, ripe tomatoes, garlic, olive oil and a pinch of salt.",
    "Glaciers carve U-shaped valleys as they slowly move downhill.",
    "Customers can return unused items within thirty days for a full refund.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Why does bread go stale faster in the refrigerator than on the counter?",
    "A gentle breeze moved through the tall grass.",
    "The startup raised twelve million dollars to build batteries for electric buses.",
    "Regular exercise improves sleep quality, mood and long-term heart health in adults of every age.",
    "Turn left at the second traffic light and the library is on your right.",
    "The defendant's lawyer argued that the evidence had been gathered without a proper warrant.",
    "Bees communicate the location of flowers through a waggle dance.",
    "I forgot my umbrella again.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Which programming language should a beginner learn first, and why do so many teachers start with Python?",
    "Coral reefs are home to about a quarter of all marine species.",
    "The village bakery opens at six and usually sells out of croissants by eight.",
    "Heavy rain flooded the underground station during the evening rush.",
    "To reset your password, click the link in the email we just sent you.",
    "The painter mixed ultramarine and burnt sienna to get a deep shadow colour for the mountains in the "
    "background of the landscape.",
    "Volcanic ash can damage jet engines.",
    "The teacher asked the students to summarise the chapter in three sentences.",
    "Owls can rotate their heads about two hundred and seventy degrees.",
    "Our team shipped the new search feature a week ahead of schedule.",
    "What time does the pharmacy close on Sundays?",
    "The river froze solid during the coldest winter anyone could remember.",
    "Machine learning models can inherit biases from the data they are trained on, so before a model is deployed "
    "its makers should measure how well it works for different groups of users and publish what they found.",
    "Add the onions and cook until they turn golden brown.",
    "The hikers reached the summit just as the clouds cleared.",
    "Solar panels produce less electricity on cloudy days.",
    "The novel follows three generations of a family running a hotel by the sea.",
    "Please keep your seatbelt fastened while the sign is on.",
    "Ancient Romans built aqueducts to carry water into their cities.",
    "The stock market fell sharply after the central bank's surprise announcement.",
    "Dogs were probably domesticated from wolves more than fifteen thousand years ago.",
    "The software update fixes a bug that caused the app to crash when uploading photos.",
    "Could you explain how vaccines train the immune system?",
    "The festival featured music, food stalls and fireworks over the harbour.",
    "Shorter meetings with a clear agenda tend to end with better decisions.",
    "The lighthouse keeper logged every passing ship in a leather notebook.",
    "Earthquakes happen when stress along a fault is suddenly released.",
    "My grandmother grew tomatoes, beans and sunflowers in her small back garden.",
    "The chess champion resigned after a long endgame.",
    "Recycling aluminium uses far less energy than producing it from raw ore.",
    "The city council approved a plan to plant ten thousand trees along its main roads over the next five years, "
    "paid for by a small parking levy, after residents complained that the streets had become too hot in summer.",
)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between samples (numpy's default); NaN if none."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured setting. Latencies are per call: a batch in-process, a request when served."""

    system: str  # "in-process", "genie-serve", "genie-serve, no batching"
    setting: str  # "batch 32", "8 clients"
    threads: str  # torch threads: "2", or "2 x 1" for two workers of one thread
    completed: int  # sentences embedded
    seconds: float  # first call started to last call done
    latencies_s: tuple[float, ...]
    errors: int = 0
    error_messages: tuple[str, ...] = ()
    mean_batch: float | None = None  # inputs per forward on the server (its genie_batch_size histogram)
    cpu_stall: float | None = None  # share of the row's time some task waited for a CPU

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_s, 99) * 1000


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    met: bool | None  # None: a row it needs was not measured
    detail: str

    def line(self) -> str:
        verdict = "not measured" if self.met is None else ("met" if self.met else "NOT met")
        return f"  {self.name} (target {self.goal}): {verdict}; {self.detail}"


def _verdict(ok: bool, *rows: Row) -> tuple[bool, str]:
    errors = sum(r.errors for r in rows)
    return (ok and errors == 0), (f" ({errors} failed requests count as NOT met)" if errors else "")


def throughput_target(served: Row | None, inproc: Row | None) -> Target:
    name = f"genie-serve at {served.setting if served else 'many clients'} vs in-process batch {BATCH}"
    if served is None or inproc is None:
        return Target(name, ">= 0.8x", None, "a row is missing")
    ratio = served.throughput / inproc.throughput
    met, note = _verdict(ratio >= 0.8, served)
    detail = (f"{served.throughput:,.1f} vs {inproc.throughput:,.1f} sentences/s ({inproc.threads} threads) "
              f"= {ratio:.2f}x{note}")
    return Target(name, ">= 0.8x", met, detail)


def batching_target(on: Row | None, off: Row | None) -> Target:
    name = f"batching on vs off at {on.setting if on else 'many clients'}"
    if on is None or off is None:
        return Target(name, ">= 3x", None, "a row is missing")
    ratio = on.throughput / off.throughput
    met, note = _verdict(ratio >= 3.0, on, off)
    return Target(name, ">= 3x", met, f"{on.throughput:,.1f} vs {off.throughput:,.1f} requests/s = {ratio:.2f}x{note}")


def latency_target(served: Row | None, inproc: Row | None) -> Target:
    name = "genie-serve p50 at 1 client vs in-process batch 1 p50"
    if served is None or inproc is None:
        return Target(name, "<= +5 ms", None, "a row is missing")
    extra = served.p50_ms - inproc.p50_ms
    met, note = _verdict(extra <= 5.0, served)
    detail = f"{served.p50_ms:.2f} vs {inproc.p50_ms:.2f} ms ({inproc.threads} thread) = {extra:+.2f} ms{note}"
    return Target(name, "<= +5 ms", met, detail)


def targets(rows: Sequence[Row], all_threads: int, worker_threads: int, many: int) -> list[Target]:
    """The three targets over a run's rows. Throughput is held against in-process batch 32 on every core (the
    machine's ceiling); latency against in-process batch 1 on one worker's threads (what a request gets)."""

    def find(system: str, setting: str, threads: str) -> Row | None:
        return next((r for r in rows if (r.system, r.setting, r.threads) == (system, setting, threads)), None)

    served_threads = f"2 x {worker_threads}"
    return [
        throughput_target(find("genie-serve", clients(many), served_threads),
                          find("in-process", f"batch {BATCH}", str(all_threads))),
        batching_target(find("genie-serve", clients(many), served_threads),
                        find("genie-serve, no batching", clients(many), served_threads)),
        latency_target(find("genie-serve", clients(1), served_threads),
                       find("in-process", "batch 1", str(worker_threads))),
    ]


def clients(n: int) -> str:
    return f"{n} client" + ("" if n == 1 else "s")


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = (("system", "<26"), ("setting", "<20"), ("threads", ">7"), ("sentences", ">10"), ("sent/s", ">9"),
           ("p50 ms", ">9"), ("p99 ms", ">9"), ("mean batch", ">11"), ("errors", ">7"), ("CPU stall", ">10"))


def table(rows: Sequence[Row]) -> list[str]:
    lines = ["".join(format(name, fmt) for name, fmt in COLUMNS)]
    for r in rows:
        cells = (r.system, r.setting, r.threads, f"{r.completed:,}", f"{r.throughput:,.1f}", f"{r.p50_ms:,.2f}",
                 f"{r.p99_ms:,.2f}", _opt(r.mean_batch, ".1f"), str(r.errors), _opt(r.cpu_stall, ".0%"))
        lines.append("".join(format(c, fmt) for c, (_, fmt) in zip(cells, COLUMNS)))
    return lines


_HIST = re.compile(r'^genie_batch_size_(sum|count)\{model="([^"]+)"\}\s+(\S+)$', re.MULTILINE)


def batch_totals(metrics_text: str, model: str) -> tuple[float, float]:
    """(inputs, forwards) so far for `model`, from genie-serve's Prometheus text; (0, 0) before any forward."""
    found = {kind: float(value) for kind, name, value in _HIST.findall(metrics_text) if name == model}
    return found.get("sum", 0.0), found.get("count", 0.0)
