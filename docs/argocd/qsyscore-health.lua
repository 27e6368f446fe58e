-- Argo CD health check for qsys.dev/QSysCore (resource.customizations.health.qsys.dev_QSysCore).
-- Built on status.observedGeneration and the Ready, Stalled, Reconciling, GatewayAvailable and
-- CoreConnected conditions.
local hs = {}

local function condition(ctype)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == ctype then
        return c
      end
    end
  end
  return nil
end

local function text(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason or ""
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end

local generation = obj.metadata.generation or 0
local observed = obj.status.observedGeneration or 0
if observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

-- kstatus conditions: Stalled needs a human, Reconciling is a gateway rollout under way
-- (Ready may stay True meanwhile: the old pods still serve).
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

-- Not ready. A spec or apply the API server refused, an image the platform does
-- not run, and a Core the gateways cannot reach, need a human; anything else is
-- still converging.
if ready.reason == "InvalidSpec" or ready.reason == "ApplyRejected"
    or ready.reason == "ImageNotAllowed" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end

local connected = condition("CoreConnected")
if connected ~= nil and connected.status == "False" then
  hs.status = "Degraded"
  hs.message = text(connected)
  return hs
end

local gateway = condition("GatewayAvailable")
if gateway ~= nil and gateway.status == "False" and gateway.reason == "DeploymentMissing" then
  hs.status = "Degraded"
  hs.message = text(gateway)
  return hs
end

hs.status = "Progressing"
hs.message = text(ready)
return hs
