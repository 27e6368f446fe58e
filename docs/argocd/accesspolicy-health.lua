-- Argo CD health check for qsys.dev/AccessPolicy (resource.customizations.health.qsys.dev_AccessPolicy).
-- Built on status.observedGeneration and the Ready, Stalled and Bound conditions.
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

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

-- A missing Core, a subject another policy already holds, a token Secret
-- that is absent or invalid: none of these resolve without a change.
local bound = condition("Bound")
if bound ~= nil and bound.status == "False" then
  hs.status = "Degraded"
  hs.message = text(bound)
  return hs
end
if ready.status == "False" and ready.reason ~= nil and ready.reason ~= "" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end

hs.status = "Progressing"
hs.message = text(ready)
return hs
