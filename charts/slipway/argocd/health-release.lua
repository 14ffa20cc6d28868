-- Argo CD health check for slipway.dev/v1alpha1 Release.
--
-- Install as the argocd-cm key `resource.customizations.health.slipway.dev_Release`
-- (docs/gitops.md). Argo CD runs it with the live object in `obj` and reads the returned table.
-- Plain Lua 5.1 so it runs in Argo CD's interpreter as well as in Lua 5.4, which
-- tests/gitops/run-lua-tests.lua uses to check it against a status fixture of every phase.
--
--   observedGeneration < generation           -> Progressing (the operator has not seen the spec)
--   Stalled=True, or phase Failed/RolledBack  -> Degraded    (needs a spec change or a person)
--   phase AwaitingApproval/AwaitingPromotion/Frozen -> Suspended (gated, waits on a person/upstream)
--   Ready=True                                -> Healthy     (the version is rolled out)
--   anything else                             -> Progressing (Pending, Migrating, RollingOut, Verifying)
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

-- "reason: message" of a condition (without a reason that merely repeats the phase), or the
-- fallback when it says nothing.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  if reason == obj.status.phase then
    reason = ""
  end
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
  hs.message = "Waiting for the Slipway operator to observe the Release"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Slipway operator to observe generation " .. integer(generation)
  return hs
end

local phase = status.phase or "Pending"
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local version = status.version or (obj.spec and obj.spec.version) or ""

if (stalled ~= nil and stalled.status == "True") or phase == "Failed" or phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. explain(ready, explain(stalled, "the revision failed"))
  return hs
end

if phase == "AwaitingApproval" or phase == "AwaitingPromotion" or phase == "Frozen" then
  hs.status = "Suspended"
  hs.message = phase .. ": " .. explain(ready, "waiting on a gate of the Environment")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = phase .. ": " .. version .. " is rolled out"
  return hs
end

hs.status = "Progressing"
hs.message = phase .. ": " .. explain(ready, "rollout in progress")
return hs
