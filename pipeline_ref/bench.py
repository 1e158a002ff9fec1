"""Placeholder until the benchmark sweep lands (issue 3)."""


def add_parser(sub) -> None:
    sub.add_parser("bench", help="sweep schedules x microbatches and measure (not written yet)")


def main(args) -> int:
    raise NotImplementedError("python -m pipeline_ref bench is being written")
