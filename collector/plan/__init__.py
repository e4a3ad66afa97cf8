"""The central test plan (plan.yaml): what every probe of the fleet measures, served to each probe
expanded for its city, ISP and labels (`GET /api/v1/plan`): model (the file and its expansion),
templates, load (reading and checking it), service (the route)."""
