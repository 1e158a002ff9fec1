"""The pp x dp grid of ranks, and the two communicators every rank needs.

    rank = replica * pp + stage          (the ranks of one pipeline are neighbours)

    pp = 4, dp = 2:      stage 0  stage 1  stage 2  stage 3
         replica 0:      rank 0   rank 1   rank 2   rank 3     <- pipeline communicator
         replica 1:      rank 4   rank 5   rank 6   rank 7
                           ^ data communicator (same stage, every replica)

Point-to-point pipeline messages travel inside a pipeline communicator; the
all-reduce of gradients travels inside a data communicator, among the ranks that
hold the same layers. Both are made with ``Comm.Split``: ranks that pass the same
``color`` land in the same new communicator, ordered by ``key``.

Keeping a pipeline's ranks contiguous puts its many small per-microbatch
messages between neighbours (on one node, with ``mpiexec`` filling nodes in
order), while the one large all-reduce per step crosses further.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Grid:
    pp: int
    dp: int

    def coords(self, rank: int) -> tuple[int, int]:
        """(stage, replica) of a world rank."""
        return rank % self.pp, rank // self.pp

    def rank(self, stage: int, replica: int) -> int:
        return replica * self.pp + stage

    def pipeline_ranks(self, replica: int) -> list[int]:
        return [self.rank(s, replica) for s in range(self.pp)]

    def data_ranks(self, stage: int) -> list[int]:
        return [self.rank(stage, r) for r in range(self.dp)]


@dataclass
class Topology:
    grid: Grid
    stage: int
    replica: int
    pipeline: object     # MPI communicator: this replica's stages, rank = stage
    data: object         # MPI communicator: this stage in every replica, rank = replica


def grid(comm, pp: int, dp: int) -> Topology:
    """Build both communicators from ``comm`` (every rank of ``comm`` must call this)."""
    grid = Grid(pp, dp)
    if comm.Get_size() != pp * dp:
        raise ValueError(f"{comm.Get_size()} ranks cannot form a {pp} x {dp} grid")
    stage, replica = grid.coords(comm.Get_rank())
    pipeline = comm.Split(color=replica, key=stage)
    data = comm.Split(color=stage, key=replica)
    return Topology(grid, stage, replica, pipeline, data)


def draw(grid: Grid, ax=None, title: str | None = None):
    """The grid as a picture: one box per rank, pipeline communicators as rows, data ones as columns."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * grid.pp + 1.5, 1.1 * grid.dp + 1.2))
    for replica in range(grid.dp):
        y = grid.dp - 1 - replica
        ax.add_patch(FancyBboxPatch((-0.45, y - 0.38), grid.pp - 0.1, 0.76, boxstyle="round,pad=0.02",
                                    fc="none", ec="tab:blue", lw=1.5, ls="--"))
        for stage in range(grid.pp):
            ax.add_patch(FancyBboxPatch((stage - 0.3, y - 0.25), 0.6, 0.5, boxstyle="round,pad=0.02",
                                        fc="white", ec="black"))
            ax.text(stage, y, f"rank {grid.rank(stage, replica)}", ha="center", va="center", fontsize=9)
            if stage < grid.pp - 1:
                ax.annotate("", (stage + 0.68, y), (stage + 0.32, y), arrowprops={"arrowstyle": "<->"})
        ax.text(-0.6, y, f"replica {replica}", ha="right", va="center", color="tab:blue")
    for stage in range(grid.pp):
        ax.add_patch(FancyBboxPatch((stage - 0.4, -0.45), 0.8, grid.dp - 0.1, boxstyle="round,pad=0.02",
                                    fc="none", ec="tab:orange", lw=1.5, ls=":"))
        ax.text(stage, grid.dp - 0.4, f"stage {stage}", ha="center", va="bottom", color="tab:orange")
    ax.set_xlim(-1.8, grid.pp)
    ax.set_ylim(-0.7, grid.dp + 0.1)
    ax.axis("off")
    ax.set_title(title or f"pp = {grid.pp} x dp = {grid.dp}: pipeline communicators (blue rows), "
                          f"data communicators (orange columns)", fontsize=9)
    return ax


def by_world_rank(steps: list, topo) -> list:
    """With --dp > 1, "waiting for ... from rank k" names the world rank mpiexec shows, and its stage."""
    if topo.grid.dp == 1:
        return steps
    named = lambda s: f"from rank {topo.grid.rank(s, topo.replica)} (stage {s})"
    return [replace(step, waiting=step.waiting.replace(f"from rank {step.receive.source}",
                                                       named(step.receive.source)))
            if step.receive is not None else step for step in steps]
