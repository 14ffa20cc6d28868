-- Runs the Argo CD health checks of charts/slipway/argocd/ against status fixtures of every
-- Release phase and of the Environment and ScaledWorker states, and checks the health each
-- one reports.
--
--   lua5.4 tests/gitops/run-lua-tests.lua
--
-- Prints one line per case, then "N passed, M failed" alone on the last line; exits non-zero
-- when a case fails. Run by `cargo test --test chart` (lua_health_checks_pass).
--
-- Each script runs in an environment holding only what Argo CD's interpreter offers (the base
-- functions, string, table, math) and `obj`, the object as Argo CD decodes it from JSON.
-- Argo CD's Lua has only floating-point numbers, so some fixtures use 7.0 rather than 7.

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local scripts = here .. "/../../charts/slipway/argocd/"

local function sandbox(obj)
  return {
    obj = obj,
    ipairs = ipairs,
    pairs = pairs,
    next = next,
    type = type,
    tostring = tostring,
    tonumber = tonumber,
    error = error,
    pcall = pcall,
    select = select,
    string = string,
    table = table,
    math = math,
  }
end

local function health(kind, obj)
  local path = scripts .. "health-" .. kind .. ".lua"
  local chunk, err = loadfile(path, "t", sandbox(obj))
  if chunk == nil then
    return nil, "cannot load " .. path .. ": " .. tostring(err)
  end
  local ok, hs = pcall(chunk)
  if not ok then
    return nil, "error running " .. path .. ": " .. tostring(hs)
  end
  if type(hs) ~= "table" then
    return nil, path .. " returned " .. type(hs) .. ", not a table"
  end
  return hs
end

-- Fixtures -------------------------------------------------------------------------------

local function cond(type_, status, reason, message, generation)
  return {
    type = type_,
    status = status,
    reason = reason,
    message = message or "",
    observedGeneration = generation,
    lastTransitionTime = "2025-01-01T00:00:00Z",
  }
end

-- Ready/Reconciling/Stalled and the Release-specific conditions as the operator derives them
-- from the phase (src/release/machine.rs, finish_conditions).
local release_reasons = {
  Pending = { "Pending", "" },
  AwaitingPromotion = {
    "PromotionPending",
    "shop v1.6.1 has not Succeeded in Environment staging yet (promotion.from of Environment prod)",
  },
  AwaitingApproval = {
    "AwaitingApproval",
    "Environment prod requires approval: set annotation slipway.dev/approved-version=v1.6.1 on Release shop",
  },
  Migrating = { "Migrating", "migration Job shop-migrate-7-abc12 is running" },
  RollingOut = { "RollingOut", "2 of 3 services available" },
  Verifying = { "Verifying", "verification attempt 2 of 10" },
  Succeeded = { "Succeeded", "v1.6.1 is rolled out" },
  Failed = { "MigrationFailed", "migration Job shop-migrate-7-abc12 failed: BackoffLimitExceeded" },
  RolledBack = {
    "RolledBack",
    "v1.6.1 failed (HealthCheckFailed: /health answered HTTP 503); rolled back to revision 6 (v1.6.0)",
  },
  Frozen = { "Frozen", "Environment prod is frozen: new rollouts wait" },
}

local function release_status(phase, generation)
  local g = generation or 7
  local reason, message = release_reasons[phase][1], release_reasons[phase][2]
  local ready, reconciling, stalled = "False", "True", "False"
  if phase == "Succeeded" then
    ready, reconciling = "True", "False"
  elseif phase == "Failed" or phase == "RolledBack" then
    reconciling, stalled = "False", "True"
  end
  local rolled_out = (phase == "Verifying" or phase == "Succeeded") and "True" or "False"
  local healthy = "Unknown"
  if phase == "Succeeded" then
    healthy = "True"
  elseif phase == "Failed" or phase == "RolledBack" then
    healthy = "False"
  end
  local serving = "v1.6.1"
  if phase == "RolledBack" or phase == "Failed" then
    serving = "v1.6.0"
  end
  -- Reconciling, Stalled and RolledBack are abnormal-true: present only while True.
  local conditions = { cond("Ready", ready, reason, message, g) }
  if reconciling == "True" then
    table.insert(conditions, cond("Reconciling", "True", reason, message, g))
  end
  if stalled == "True" then
    table.insert(conditions, cond("Stalled", "True", reason, message, g))
  end
  table.insert(conditions,
    cond("RolledOut", rolled_out, rolled_out == "True" and "AllServicesAvailable" or reason, "", g))
  table.insert(conditions, cond("Healthy", healthy, reason, "", g))
  if phase == "RolledBack" then
    table.insert(conditions, cond("RolledBack", "True", "RolledBack", message, g))
  end
  return {
    observedGeneration = g,
    phase = phase,
    version = serving,
    revision = g,
    conditions = conditions,
  }
end

local function release(status, generation)
  return {
    apiVersion = "slipway.dev/v1alpha1",
    kind = "Release",
    metadata = { name = "shop", namespace = "shop", generation = generation or 7 },
    spec = { environment = "prod", version = "v1.6.1" },
    status = status,
  }
end

local function scaled_worker(status, generation)
  return {
    apiVersion = "slipway.dev/v1alpha1",
    kind = "ScaledWorker",
    metadata = { name = "worker", namespace = "shop", generation = generation or 2 },
    spec = { target = { release = { name = "shop", service = "worker" } }, maxReplicas = 30 },
    status = status,
  }
end

local function worker_status(conditions, extra)
  local st = { observedGeneration = 2, desiredReplicas = 10, currentReplicas = 10, conditions = conditions }
  for k, v in pairs(extra or {}) do
    st[k] = v
  end
  return st
end

local function environment(status, generation)
  return {
    apiVersion = "slipway.dev/v1alpha1",
    kind = "Environment",
    metadata = { name = "prod", namespace = "shop", generation = generation or 3 },
    spec = { platform = { kubernetes = { namespace = "shop-prod" } } },
    status = status,
  }
end

-- Cases ----------------------------------------------------------------------------------

local cases = {}
-- `contains`: text the message must contain (plain, not a pattern); `absent`: text it must not.
local function case(kind, name, obj, want, contains, absent)
  cases[#cases + 1] = { kind = kind, name = name, obj = obj, want = want, contains = contains, absent = absent }
end

-- Release: every phase of status.phase.
local phase_health = {
  { "Pending", "Progressing" },
  { "AwaitingPromotion", "Suspended" },
  { "AwaitingApproval", "Suspended" },
  { "Migrating", "Progressing" },
  { "RollingOut", "Progressing" },
  { "Verifying", "Progressing" },
  { "Succeeded", "Healthy" },
  { "Failed", "Degraded" },
  { "RolledBack", "Degraded" },
  { "Frozen", "Suspended" },
}
for _, p in ipairs(phase_health) do
  case("release", "phase " .. p[1], release(release_status(p[1])), p[2], p[1])
end
-- Release: edges.
case("release", "no status yet", release(nil), "Progressing", "observe")
do
  local st = release_status("Succeeded")
  st.observedGeneration = nil
  case("release", "status without observedGeneration", release(st), "Progressing", "generation 7")
end
case("release", "Succeeded for an older generation (stale)", release(release_status("Succeeded", 7), 8),
  "Progressing", "generation 8")
case("release", "Failed for an older generation (stale)", release(release_status("Failed", 7), 8),
  "Progressing", "generation 8")
case("release", "Succeeded with float generations (as Argo CD decodes JSON)",
  release(release_status("Succeeded", 7.0), 7.0), "Healthy", "v1.6.1")
case("release", "stale with float generations says 'generation 8', not 8.0",
  release(release_status("Succeeded", 7.0), 8.0), "Progressing", "generation 8", "8.0")
case("release", "Stalled InvalidSpec while Pending (blocked)", release({
  observedGeneration = 7,
  phase = "Pending",
  conditions = {
    cond("Ready", "False", "InvalidSpec", "Release shop: spec.services[0].healthCheck.port names no port", 7),
    cond("Stalled", "True", "InvalidSpec", "", 7),
  },
}), "Degraded", "InvalidSpec")
case("release", "EnvironmentNotFound (waits, not stalled)", release({
  observedGeneration = 7,
  phase = "Pending",
  conditions = {
    cond("Ready", "False", "EnvironmentNotFound", "spec.environment: Environment prod not found in namespace shop", 7),
    cond("Reconciling", "True", "EnvironmentNotFound", "", 7),
  },
}), "Progressing", "EnvironmentNotFound")
do
  -- As operators before 2026-12-03 wrote it: the abnormal-true conditions present as False.
  local st = release_status("Succeeded")
  table.insert(st.conditions, cond("Reconciling", "False", "Succeeded", "", 7))
  table.insert(st.conditions, cond("Stalled", "False", "Succeeded", "", 7))
  table.insert(st.conditions, cond("RolledBack", "False", "NotRolledBack", "", 7))
  case("release", "Succeeded with Reconciling/Stalled/RolledBack False", release(st), "Healthy", "v1.6.1")
end
case("release", "phase Failed without conditions", release({ observedGeneration = 7, phase = "Failed" }),
  "Degraded", "Failed")
case("release", "observed but no phase and no conditions", release({ observedGeneration = 7 }),
  "Progressing", "Pending")

-- ScaledWorker.
local function sw_conditions(ready, stalled, paused, reason, message)
  -- Reconciling and Stalled only while True, as the operator writes them.
  local conditions = { cond("Ready", ready, reason, message, 2) }
  if ready ~= "True" and stalled ~= "True" then
    table.insert(conditions, cond("Reconciling", "True", reason, message, 2))
  end
  if stalled == "True" then
    table.insert(conditions, cond("Stalled", "True", reason, message, 2))
  end
  table.insert(conditions, cond("Active", "True", "TriggerActive", "work-items: 95 > 0", 2))
  table.insert(conditions, cond("Fallback", "False", "SourcesHealthy", "", 2))
  table.insert(conditions, cond("Paused", paused, paused == "True" and "Paused" or "NotPaused",
    paused == "True" and "spec.paused: replicas frozen at 10" or "", 2))
  return conditions
end
case("scaledworker", "ready", scaled_worker(worker_status(sw_conditions("True", "False", "False", "Scaled", ""))),
  "Healthy", "10 desired replicas")
case("scaledworker", "stalled (invalid target)", scaled_worker(worker_status(sw_conditions("False", "True", "False",
  "InvalidSpec", "spec.target.release: Release shop has no service worker")), nil), "Degraded", "InvalidSpec")
case("scaledworker", "paused", scaled_worker(worker_status(sw_conditions("True", "False", "True", "Paused", ""))),
  "Suspended", "paused")
case("scaledworker", "paused while not ready", scaled_worker(worker_status(sw_conditions("False", "False", "True",
  "Paused", ""))), "Suspended", "paused")
case("scaledworker", "stale generation", scaled_worker(worker_status(sw_conditions("True", "False", "False", "Scaled",
  "")), 3), "Progressing", "generation 3")
case("scaledworker", "paused but stale generation", scaled_worker(worker_status(sw_conditions("True", "False", "True",
  "Paused", "")), 3), "Progressing", "generation 3")
case("scaledworker", "no status", scaled_worker(nil), "Progressing", "observe")
case("scaledworker", "observed, Ready Unknown (controller not acting yet)", scaled_worker({
  observedGeneration = 2,
  target = "release shop/worker",
  conditions = {
    cond("Reconciling", "True", "AwaitingController", "the ScaledWorker controller has observed this generation", 2),
    cond("Ready", "Unknown", "Reconciling", "ScaledWorker has not converged yet", 2),
  },
}), "Progressing", "Reconciling")
case("scaledworker", "trigger error, not stalled", scaled_worker(worker_status(sw_conditions("False", "False",
  "False", "TriggerError", "work-items: redis://redis:6379: connection refused"))), "Progressing", "TriggerError")

-- Environment.
local function env_status(ready, stalled, reason, message, extra)
  local st = {
    observedGeneration = 3,
    platform = "kubernetes",
    releases = { { name = "shop", app = "shop", version = "v1.6.1", phase = "Succeeded" } },
    conditions = { cond("Ready", ready, reason, message, 3) },
  }
  if stalled == "True" then
    table.insert(st.conditions, cond("Stalled", "True", reason, message, 3))
  end
  for k, v in pairs(extra or {}) do
    st[k] = v
  end
  return st
end
case("environment", "ready", environment(env_status("True", "False", "Ready", "workloads go to namespace shop-prod")),
  "Healthy", "shop-prod")
case("environment", "ready and frozen", environment(env_status("True", "False", "Ready",
  "workloads go to namespace shop-prod; frozen: new rollouts wait")), "Healthy", "frozen")
case("environment", "stalled (secret source the platform cannot serve)", environment(env_status("False", "True",
  "InvalidSpec", "Environment prod: spec.secrets[1].from.azureKeyVault (variable DB) cannot be served by platform.kubernetes")),
  "Degraded", "spec.secrets")
case("environment", "stalled (platform not supported)", environment(env_status("False", "True", "PlatformNotSupported",
  "Environment prod: spec.platform.ecs is not supported by this Slipway version yet")), "Degraded", "PlatformNotSupported")
case("environment", "stale generation", environment(env_status("True", "False", "Ready", ""), 4), "Progressing",
  "generation 4")
case("environment", "no status", environment(nil), "Progressing", "observe")
case("environment", "observed, Ready Unknown", environment({
  observedGeneration = 3,
  conditions = { cond("Ready", "Unknown", "Reconciling", "Environment has not converged yet", 3) },
}), "Progressing", "converged")

-- Run ------------------------------------------------------------------------------------

local passed, failed = 0, 0
for _, c in ipairs(cases) do
  local hs, err = health(c.kind, c.obj)
  local problem
  if hs == nil then
    problem = err
  elseif hs.status ~= c.want then
    problem = "got " .. tostring(hs.status) .. ", want " .. c.want
  elseif type(hs.message) ~= "string" or hs.message == "" then
    problem = "no message"
  elseif c.contains ~= nil and not hs.message:find(c.contains, 1, true) then
    problem = "message does not contain '" .. c.contains .. "'"
  elseif c.absent ~= nil and hs.message:find(c.absent, 1, true) then
    problem = "message contains '" .. c.absent .. "'"
  end
  local label = c.kind .. ": " .. c.name
  if problem == nil then
    passed = passed + 1
    print(string.format("ok   %-75s -> %-11s (%s)", label, hs.status, hs.message))
  else
    failed = failed + 1
    print(string.format("FAIL %-75s -> %s%s", label, problem,
      hs and hs.message and (" (message: " .. hs.message .. ")") or ""))
  end
end
print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then
  os.exit(1)
end
