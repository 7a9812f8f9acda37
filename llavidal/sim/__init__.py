"""The embedded ADL world: small, real-format ADL datasets generated offline with pybullet.

    from llavidal.sim import generate_world, ACTIVITIES
    root = generate_world("world", preset="small", seed=0)   # videos, skeletons, tracks, meta, annotations

``ACTIVITIES`` lists every activity (``name``, ``label``, ``description``, ``phrases``);
:mod:`llavidal.sim.readers` reads a generated world back (pose-text pairs, activity texts). The command line
is ``llavidal synth --out DIR --preset small|medium``. Modules that need pybullet import it lazily, so
importing this package needs only numpy.
"""

from llavidal.sim.activities import ACTIVITIES, BY_NAME, Activity

__all__ = ["ACTIVITIES", "BY_NAME", "Activity", "generate_world"]


def generate_world(out_dir, preset: str = "small", seed: int = 0, workers: int | None = None, preview: bool = False,
                   progress: bool = True):
    """Generate (or resume) a world; see :func:`llavidal.sim.world.generate_world`."""
    from llavidal.sim.world import generate_world as _generate

    return _generate(out_dir, preset=preset, seed=seed, workers=workers, preview=preview, progress=progress)
