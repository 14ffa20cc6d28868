-- Argo CD health check for slipway.dev/v1alpha1 ScaledWorker.
--
-- Install as the argocd-cm key `resource.customizations.health.slipway.dev_ScaledWorker`
-- (docs/gitops.md). Plain Lua 5.1 (Argo CD's interpreter); tested with Lua 5.4 by
-- tests/gitops/run-lua-tests.lua.
--
--   observedGeneration < generation -> Progressing (the operator has not seen the spec)
--   Stalled=True                    -> Degraded    (e.g. an invalid spec)
--   Paused=True                     -> Suspended   (spec.paused freezes the replica count)
--   Ready=True                      -> Healthy
--   anything else                   -> Progressing
local hs = {}

local function condition(status, kind)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if message ~= "" and reason ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

-- A whole number as text: Argo CD's Lua has only floats (3 prints as 3, Lua 5.4 may say 3.0).
local function integer(n)
  return (string.gsub(tostring(n), "%.0$", ""))
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Slipway operator to observe the ScaledWorker"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Slipway operator to observe generation " .. integer(generation)
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local paused = condition(status, "Paused")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled, explain(ready, "the ScaledWorker cannot scale its target"))
  return hs
end

if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = explain(paused, "paused: the replica count is frozen")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if status.desiredReplicas ~= nil then
    hs.message = integer(status.desiredReplicas) .. " desired replicas"
  else
    hs.message = explain(ready, "scaling its target")
  end
  return hs
end

hs.status = "Progressing"
hs.message = explain(ready, "waiting for the first scaling decision")
return hs
