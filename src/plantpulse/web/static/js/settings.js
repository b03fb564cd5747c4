// Settings (config:write): alert rules with a preview of how a rule reads in words, and the
// run-time system settings. Validation errors from the API are shown next to their field.
import { api } from "./api.js";
import { badge, can, failed, fieldErrors, fmt, h, notify, shell, showFieldErrors } from "./ui.js";

const form = document.getElementById("rule-form");
const machines = new Map();
const groups = new Map();
let rules = [];

const WORDS = { ">": "above", ">=": "at or above", "<": "below", "<=": "at or below" };

function value(name) {
  const el = form.elements.namedItem(name);
  if (el.type === "checkbox") return el.checked;
  return el.value.trim();
}

function num(name) {
  const v = value(name);
  return v === "" ? null : Number(v);
}

/** The rule as a sentence, as the evaluator will apply it. */
export function describe(rule) {
  const where =
    rule.scope === "machine"
      ? `machine ${machines.get(rule.machine_id) || "(choose one)"}`
      : rule.scope === "group"
        ? `any machine of group ${groups.get(rule.group_id) || "(choose one)"}`
        : "any machine";
  if (rule.kind === "no_data") {
    return `Raise a ${rule.severity} alert when ${where} sends nothing for ${fmt(rule.no_data_seconds ?? "?")} s.`;
  }
  const metric = rule.metric || "(metric)";
  let test;
  let clear = "";
  if (rule.condition === "outside") {
    test = `is outside ${fmt(rule.threshold_low ?? "?")} … ${fmt(rule.threshold_high ?? "?")}`;
    if (rule.hysteresis) clear = `; it clears once back inside by ${fmt(rule.hysteresis)}`;
  } else {
    test = `is ${WORDS[rule.condition] || rule.condition} ${fmt(rule.threshold ?? "?")}`;
    if (rule.hysteresis) {
      const back = rule.condition.startsWith(">") ? rule.threshold - rule.hysteresis : rule.threshold + rule.hysteresis;
      clear = `; it clears at ${fmt(back)}`;
    }
  }
  const duration = rule.duration_seconds ? ` for at least ${fmt(rule.duration_seconds)} s` : "";
  return `Raise a ${rule.severity} alert when ${metric} on ${where} ${test}${duration}${clear}.${rule.enabled === false ? " (disabled)" : ""}`;
}

function ruleFromForm() {
  const kind = value("kind");
  const scope = value("scope");
  const condition = value("condition");
  const rule = {
    name: value("name"),
    kind,
    scope,
    machine_id: scope === "machine" ? value("machine_id") || null : null,
    group_id: scope === "group" ? value("group_id") || null : null,
    severity: value("severity"),
    enabled: value("enabled"),
  };
  if (kind === "threshold") {
    Object.assign(rule, {
      metric: value("metric") || null,
      condition,
      threshold: condition === "outside" ? null : num("threshold"),
      threshold_low: condition === "outside" ? num("threshold_low") : null,
      threshold_high: condition === "outside" ? num("threshold_high") : null,
      duration_seconds: num("duration_seconds") ?? 0,
      hysteresis: num("hysteresis") ?? 0,
      no_data_seconds: null,
    });
  } else {
    Object.assign(rule, {
      metric: null, condition: null, threshold: null, threshold_low: null, threshold_high: null,
      no_data_seconds: num("no_data_seconds"), duration_seconds: 0, hysteresis: 0,
    });
  }
  return rule;
}

function syncForm() {
  const kind = value("kind");
  const scope = value("scope");
  const condition = value("condition");
  for (const el of form.querySelectorAll("[data-for-kind]")) el.hidden = el.dataset.forKind !== kind;
  for (const el of form.querySelectorAll("[data-for-scope]")) el.hidden = el.dataset.forScope !== scope;
  for (const el of form.querySelectorAll("[data-for-condition]")) {
    const wanted = condition === "outside" ? "outside" : "single";
    el.hidden = kind !== "threshold" || el.dataset.forCondition !== wanted;
  }
  document.getElementById("rule-preview").textContent = describe(ruleFromForm());
}

function resetForm() {
  form.reset();
  form.elements.namedItem("id").value = "";
  document.getElementById("rule-form-title").textContent = "New rule";
  document.getElementById("rule-submit").textContent = "Create rule";
  showFieldErrors(form, {});
  syncForm();
}

function edit(rule) {
  resetForm();
  for (const [key, v] of Object.entries(rule)) {
    const el = form.elements.namedItem(key);
    if (!el || el instanceof RadioNodeList) continue;
    if (el.type === "checkbox") el.checked = Boolean(v);
    else el.value = v ?? "";
  }
  document.getElementById("rule-form-title").textContent = `Edit rule “${rule.name}”`;
  document.getElementById("rule-submit").textContent = "Save rule";
  syncForm();
  form.elements.namedItem("name").focus();
}

async function toggle(rule) {
  try {
    await api(`/api/v1/alert-rules/${rule.id}`, { method: "PATCH", body: { enabled: !rule.enabled } });
    notify(`Rule “${rule.name}” ${rule.enabled ? "disabled" : "enabled"}.`);
    await loadRules();
  } catch (error) {
    failed(error);
  }
}

async function loadRules() {
  const page = await api("/api/v1/alert-rules?limit=1000");
  rules = page.items;
  const rows = rules.map((rule) =>
    h(
      "tr",
      { dataset: { ruleId: rule.id } },
      h("td", { text: rule.name }),
      h("td", { text: describe(rule) }),
      h("td", {}, badge(rule.severity, `sev-${rule.severity}`)),
      h("td", { text: rule.enabled ? "yes" : "no" }),
      h(
        "td",
        {},
        h("button", { type: "button", text: "Edit", "aria-label": `Edit ${rule.name}`, onclick: () => edit(rule) }),
        " ",
        h("button", { type: "button", text: rule.enabled ? "Disable" : "Enable", "aria-label": `${rule.enabled ? "Disable" : "Enable"} ${rule.name}`, onclick: () => toggle(rule) }),
      ),
    ),
  );
  const body = document.getElementById("rule-rows");
  body.replaceChildren(...rows);
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No rules yet." })));
}

async function saveRule(event) {
  event.preventDefault();
  const id = form.elements.namedItem("id").value;
  const rule = ruleFromForm();
  try {
    if (id) {
      const { kind, ...changes } = rule; // the kind of a rule is fixed
      await api(`/api/v1/alert-rules/${id}`, { method: "PATCH", body: changes });
      notify(`Rule “${rule.name}” saved.`);
    } else {
      await api("/api/v1/alert-rules", { method: "POST", body: rule });
      notify(`Rule “${rule.name}” created.`);
    }
    resetForm();
    await loadRules();
  } catch (error) {
    showFieldErrors(form, fieldErrors(error));
  }
}

function configInput(entry) {
  if (entry.type === "true or false") {
    return h("input", { type: "checkbox", name: "value", checked: entry.value === true });
  }
  return h("input", { name: "value", value: entry.value === null ? "" : String(entry.value), inputmode: "decimal", placeholder: "empty = none" });
}

function configForm(entry) {
  const f = h("form", { class: "filters", id: `config-${entry.key}`, novalidate: true });
  const input = configInput(entry);
  f.append(
    h("label", {}, entry.key, input),
    h("button", { type: "submit", text: "Save" }),
    h("p", { class: "hint" }, `${entry.description} Must be ${entry.type}. Default: ${fmt(entry.default)}.`),
  );
  f.addEventListener("submit", async (event) => {
    event.preventDefault();
    let next;
    if (input.type === "checkbox") next = input.checked;
    else if (input.value.trim() === "") next = null;
    else next = Number(input.value.trim());
    if (typeof next === "number" && !Number.isFinite(next)) {
      showFieldErrors(f, { value: `${entry.key} must be ${entry.type}` });
      return;
    }
    try {
      await api(`/api/v1/config/${entry.key}`, { method: "PUT", body: { value: next } });
      showFieldErrors(f, {});
      notify(`${entry.key} saved.`);
    } catch (error) {
      const errors = fieldErrors(error);
      showFieldErrors(f, { value: errors.value || errors[""] || error.message });
    }
  });
  return h("div", { class: "card" }, f);
}

async function loadConfig() {
  const entries = await api("/api/v1/config");
  document.getElementById("config-list").replaceChildren(...entries.map(configForm));
}

async function main() {
  const user = await shell();
  if (!can(user, "config:write")) {
    document.getElementById("settings-denied").hidden = false;
    return;
  }
  document.getElementById("settings").hidden = false;
  const [machinePage, groupPage] = await Promise.all([
    api("/api/v1/machines?limit=1000"),
    api("/api/v1/groups?limit=1000"),
  ]);
  const machineSelect = form.elements.namedItem("machine_id");
  for (const m of machinePage.items) {
    machines.set(m.id, m.name);
    machineSelect.append(h("option", { value: m.id, text: m.name }));
  }
  const groupSelect = form.elements.namedItem("group_id");
  for (const g of groupPage.items) {
    groups.set(g.id, g.name);
    groupSelect.append(h("option", { value: g.id, text: g.name }));
  }
  form.addEventListener("input", syncForm);
  form.addEventListener("submit", saveRule);
  document.getElementById("rule-reset").addEventListener("click", resetForm);
  syncForm();
  await Promise.all([loadRules(), loadConfig()]);
}

main().catch(failed);
