"""Generated training objects for the testbed prior: more shapes than the CGAL set's 56.

Why: with 56 training meshes the prior's held-out figures stopped moving between steps 1,000
and 6,000 (docs/RESULTS.md), i.e. it is short of shapes, not of steps. Generated objects are
allowed training data (issue 10: assets come from the registries "or generated"); they are
never held out, and the held-out set stays the catalog's.

An object is `proc-NNNN`; its number seeds everything, so a name always gives the same mesh.
Each is a union of the project's closed primitives (geometry/primitives.py: ellipsoids from
scaled spheres, boxes, cylinders, cones, tori; they may overlap, which a z-buffer renders
as the union), built by one of a few families that resemble what people photograph:
four-legged animals, upright figures, tables and chairs, turned vessels (rotationally
symmetric stacks), vehicles, and clusters of blobs and blocks. Every one is mirror-symmetric
about the object's XZ plane, as most photographed objects are (which is why the mirrored
reference is a strong baseline). Front: +X, as catalog.py's; animals and
vehicles are then turned 45° (catalog.py's three-quarter front for long objects).

Colours: each part one PALETTE colour (a mirrored pair shares it), times albedo.shading's
baked half-Lambert factor, as catalog objects get (albedo.py).
"""

import numpy as np

from dc3d_jax.geometry import primitives as P
from dc3d_jax.testbed import albedo, catalog, meshes
from dc3d_jax.testbed.render import ObjectModel

_SPHERE = dict(n_lat=6, n_lon=10)    # low-poly parts: objects stay under ~1,000 faces
_ROUND = 10


def names(count: int) -> tuple:
  return tuple(f"{catalog.PROCEDURAL_PREFIX}{i:04d}" for i in range(count))


class _Parts:
  """Collects parts; `mirrored` adds a part and its reflection through the XZ plane."""

  def __init__(self, rng):
    self.rng, self.meshes = rng, []
    self.colours = albedo.PALETTE[rng.permutation(len(albedo.PALETTE))]
    self.next_colour = 0

  def colour(self):
    c = self.colours[self.next_colour % len(self.colours)]
    self.next_colour += 1
    return c

  def add(self, make, colour=None, **kw):
    self.meshes.append(make(color=self.colour() if colour is None else colour, **kw))

  def mirrored(self, make, center, colour=None, axis=None, **kw):
    """The part at `center` (with `axis`, for parts that have one) and its mirror image."""
    colour = self.colour() if colour is None else colour
    for side in (1.0, -1.0):
      flip = np.array([1.0, side, 1.0])
      if axis is not None:
        kw["axis"] = tuple(flip * axis)
      self.add(make, colour, center=tuple(flip * center), **kw)


def _ellipsoid(center, radii, color):
  sphere = P.uv_sphere((0.0, 0.0, 0.0), 1.0, color, **_SPHERE)
  return P.translate(P.scale(sphere, radii), center)


def _cone(center, radius, height, color, axis=(0.0, 0.0, 1.0)):
  return P.cone(center, radius, height, color, n=_ROUND, axis=axis)


def _cyl(center, radius, half_height, color, axis=(0.0, 0.0, 1.0)):
  return P.cylinder(center, radius, half_height, color, n=_ROUND, axis=axis)


def _legs(parts, xs, y, top, length, radius):
  colour = parts.colour()
  for x in xs:
    parts.mirrored(_cyl, (x, y, top - length / 2), colour, radius=radius,
                   half_height=length / 2)


def _animal(parts):
  u = parts.rng.uniform
  bx, by, bz = u(0.45, 0.8), u(0.18, 0.32), u(0.18, 0.3)
  leg = u(0.25, 0.6)
  top = leg + 0.5 * bz
  parts.add(_ellipsoid, center=(0.0, 0.0, top), radii=(bx, by, bz))
  _legs(parts, (0.65 * bx, -0.65 * bx), 0.6 * by, top, top, u(0.05, 0.1))
  neck = u(0.0, 0.45)
  head = (bx + 0.1 + 0.3 * neck, 0.0, top + bz * 0.6 + neck)
  if neck > 0.1:
    parts.add(_cyl, center=(bx * 0.85, 0.0, top + 0.5 * (bz + neck)), radius=0.08,
              half_height=0.5 * (bz + neck), axis=(0.4, 0.0, 1.0))
  r = u(0.14, 0.24)
  parts.add(_ellipsoid, center=head, radii=(r * u(1.0, 1.6), r, r))
  parts.mirrored(_cone, (head[0] - 0.3 * r, 0.6 * r, head[2] + 0.6 * r), radius=0.05,
                 height=u(0.08, 0.2))
  parts.add(_cone, center=(-bx * 0.9, 0.0, top), radius=0.06, height=u(0.2, 0.5),
            axis=(-1.0, 0.0, u(-0.5, 1.0)))


def _figure(parts):
  u = parts.rng.uniform
  leg, tw, td, th = u(0.4, 0.7), u(0.18, 0.3), u(0.1, 0.18), u(0.35, 0.55)
  _legs(parts, (0.0,), 0.6 * tw, leg, leg, u(0.06, 0.1))
  torso = (0.0, 0.0, leg + th)
  if parts.rng.random() < 0.5:
    parts.add(P.box, center=torso, half_sizes=(td, tw, th))
  else:
    parts.add(_ellipsoid, center=torso, radii=(td * 1.2, tw, th))
  arm = u(0.3, 0.5)
  parts.mirrored(_cyl, (0.0, tw + 0.06, leg + 2 * th - arm / 2 - 0.05), radius=0.05,
                 half_height=arm / 2, axis=(0.0, u(0.0, 0.6), 1.0))
  r = u(0.12, 0.2)
  parts.add(_ellipsoid, center=(0.0, 0.0, leg + 2 * th + r), radii=(r, r, r * u(1.0, 1.3)))


def _furniture(parts):
  u = parts.rng.uniform
  hx, hy, leg = u(0.3, 0.7), u(0.25, 0.6), u(0.3, 0.8)
  thick = u(0.03, 0.08)
  parts.add(P.box, center=(0.0, 0.0, leg + thick), half_sizes=(hx, hy, thick))
  colour = parts.colour()
  for x in (0.85 * hx, -0.85 * hx):
    parts.mirrored(P.box, (x, 0.85 * hy, leg / 2), colour, half_sizes=(0.04, 0.04, leg / 2))
  if parts.rng.random() < 0.5:     # a chair: a back on the -X side
    back = u(0.3, 0.7)
    parts.add(P.box, center=(-hx + thick, 0.0, leg + 2 * thick + back / 2),
              half_sizes=(thick, hy, back / 2))


def _vessel(parts):
  u = parts.rng.uniform
  z = 0.0
  for _ in range(parts.rng.integers(2, 5)):
    kind, h, r = parts.rng.integers(4), u(0.15, 0.5), u(0.12, 0.45)
    if kind == 0:
      parts.add(_cyl, center=(0.0, 0.0, z + h / 2), radius=r, half_height=h / 2)
    elif kind == 1:
      parts.add(_cone, center=(0.0, 0.0, z), radius=r, height=h)
      h *= 0.6                      # the next part sits on the cone's shoulder
    elif kind == 2:
      parts.add(_ellipsoid, center=(0.0, 0.0, z + h / 2), radii=(r, r, h / 2))
    else:
      parts.add(P.torus, center=(0.0, 0.0, z + 0.3 * h), major_radius=r,
                minor_radius=0.3 * h, n_major=12, n_minor=6)
      h *= 0.6
    z += h


def _vehicle(parts):
  u = parts.rng.uniform
  lx, wy, hz, wheel = u(0.5, 0.9), u(0.2, 0.35), u(0.1, 0.2), u(0.1, 0.18)
  base = wheel + hz
  parts.add(P.box, center=(0.0, 0.0, base), half_sizes=(lx, wy, hz))
  parts.add(P.box, center=(u(-0.3, 0.2) * lx, 0.0, base + hz + u(0.08, 0.2)),
            half_sizes=(u(0.3, 0.6) * lx, 0.9 * wy, u(0.08, 0.2)))
  colour = parts.colour()
  for x in (0.65 * lx, -0.65 * lx):
    parts.mirrored(_cyl, (x, wy + 0.03, wheel), colour, radius=wheel, half_height=0.04,
                   axis=(0.0, 1.0, 0.0))


def _cluster(parts):
  u = parts.rng.uniform
  parts.add(_ellipsoid, center=(0.0, 0.0, 0.5), radii=(u(0.2, 0.4), u(0.2, 0.4), u(0.2, 0.5)))
  for _ in range(parts.rng.integers(2, 5)):
    c = (u(-0.5, 0.5), u(0.1, 0.5), u(0.1, 0.9))
    if parts.rng.random() < 0.5:
      parts.mirrored(_ellipsoid, c, radii=tuple(u(0.08, 0.25, 3)))
    else:
      parts.mirrored(P.box, c, half_sizes=tuple(u(0.06, 0.2, 3)))


FAMILIES = (_animal, _figure, _furniture, _vessel, _vehicle, _cluster)
_THREE_QUARTER = (_animal, _vehicle)


def parts(name: str) -> tuple[list, bool]:
  """The generated object `name` ("proc-NNNN") as its closed primitive parts (upright Z-up,
  front towards +X, before the three-quarter turn), and whether its family takes that turn."""
  if not catalog.is_procedural(name):
    raise KeyError(f"{name!r} is not a generated testbed object "
                   f"('{catalog.PROCEDURAL_PREFIX}NNNN')")
  index = int(name[len(catalog.PROCEDURAL_PREFIX):])
  family = FAMILIES[index % len(FAMILIES)]
  collected = _Parts(np.random.default_rng(
      [index, albedo.object_seed(catalog.PROCEDURAL_PREFIX)]))
  family(collected)
  return collected.meshes, family in _THREE_QUARTER


def generate(name: str) -> ObjectModel:
  """The generated object `name` ("proc-NNNN"), upright Z-up, front towards +X."""
  part_meshes, three_quarter = parts(name)
  mesh = P.concatenate(part_meshes)
  v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
  if three_quarter:
    v = meshes.rotate(v, (("z", -45.0),))
  shade = albedo.shading(meshes.vertex_normals(v, f))
  attr = np.asarray(mesh.colors)[f] * shade[f][..., None]
  return ObjectModel(name=name, vertices=v, faces=f, corner_attr=attr.astype(np.float32))
