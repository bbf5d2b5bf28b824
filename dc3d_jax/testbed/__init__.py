"""The testbed: ground-truth meshes, their renders and the learned testbed prior's training
(issue 10). Sits at the stages level: it imports geometry, cameras, io, eval, priors and
stages.common / stages.loop (training reuses the stage loop)."""
