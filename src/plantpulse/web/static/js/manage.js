// Machines management (machines:write): add, edit, change status, groups, issue or rotate an
// API key (shown once), delete with confirmation (machines:delete).
import { api, query } from "./api.js";
import { ago, badge, can, debounce, failed, fieldErrors, h, notify, shell, showFieldErrors } from "./ui.js";

const PAGE_SIZE = 50;
let user;
let offset = 0;
let groups = [];
let editing = null;
let deleting = null;

function clean(data) {
  // Empty optional text fields mean "none".
  const out = {};
  for (const [key, value] of Object.entries(data)) out[key] = typeof value === "string" && value.trim() === "" ? null : typeof value === "string" ? value.trim() : value;
  return out;
}

async function loadGroups() {
  groups = (await api("/api/v1/groups?limit=1000")).items;
  const list = document.getElementById("group-list");
  list.replaceChildren(
    ...groups.map((g) =>
      h(
        "li",
        {},
        `${g.name} · ${g.machine_count} machine${g.machine_count === 1 ? "" : "s"} `,
        h("button", { type: "button", text: "Delete group", "aria-label": `Delete group ${g.name}`, onclick: () => deleteGroup(g) }),
      ),
    ),
  );
  if (!groups.length) list.append(h("li", { class: "muted", text: "No groups yet." }));
}

async function deleteGroup(group) {
  if (!confirm(`Delete group ${group.name}? Its machines stay.`)) return;
  try {
    await api(`/api/v1/groups/${group.id}`, { method: "DELETE" });
    notify(`Group ${group.name} deleted.`);
    await loadGroups();
  } catch (error) {
    failed(error);
  }
}

function statusSelect(machine) {
  const select = h("select", { "aria-label": `Status of ${machine.name}` });
  for (const option of document.querySelector("#add-machine select[name=status]").options) {
    select.append(h("option", { value: option.value, text: option.value, selected: option.value === machine.status }));
  }
  select.addEventListener("change", async () => {
    try {
      await api(`/api/v1/machines/${machine.id}/status`, { method: "PATCH", body: { status: select.value } });
      notify(`${machine.name}: ${select.value}.`);
    } catch (error) {
      failed(error);
      select.value = machine.status;
    }
  });
  return select;
}

function row(machine) {
  const actions = [
    h("button", { type: "button", text: "Edit", "aria-label": `Edit ${machine.name}`, onclick: () => openEdit(machine) }),
    " ",
    h("button", { type: "button", text: machine.has_api_key ? "Rotate key" : "Issue key", "aria-label": `${machine.has_api_key ? "Rotate" : "Issue"} API key of ${machine.name}`, onclick: () => issueKey(machine) }),
  ];
  if (can(user, "machines:delete")) {
    actions.push(" ", h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${machine.name}`, onclick: () => openDelete(machine) }));
  }
  return h(
    "tr",
    { dataset: { machineId: machine.id } },
    h("td", {}, h("a", { href: `/app/machines/${machine.id}`, text: machine.name })),
    h("td", { text: machine.location || "–" }),
    h("td", { text: machine.sensor_type || "–" }),
    h("td", {}, statusSelect(machine)),
    h("td", { text: machine.has_api_key ? `since ${ago(machine.api_key_created_at)}` : "none" }),
    h("td", {}, ...actions),
  );
}

async function load() {
  const q = document.getElementById("manage-search").value.trim();
  const page = await api(`/api/v1/machines${query({ q, limit: PAGE_SIZE, offset, sort: "name" })}`);
  document.getElementById("manage-rows").replaceChildren(...page.items.map(row));
  document.getElementById("manage-page").textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "No machines.";
  document.getElementById("manage-prev").disabled = offset === 0;
  document.getElementById("manage-next").disabled = offset + PAGE_SIZE >= page.total;
}

// ------------------------------------------------------------------------------ edit ----
const editDialog = document.getElementById("edit-dialog");
const editForm = document.getElementById("edit-machine");

async function openEdit(machine) {
  const detail = await api(`/api/v1/machines/${machine.id}`);
  editing = detail;
  showFieldErrors(editForm, {});
  for (const name of ["name", "location", "sensor_type", "description", "status"]) {
    editForm.elements.namedItem(name).value = detail[name] ?? "";
  }
  const member = new Set(detail.groups.map((g) => g.id));
  const box = document.getElementById("edit-groups");
  box.replaceChildren(
    h("legend", { text: "Groups" }),
    ...groups.map((g) => h("label", {}, h("input", { type: "checkbox", value: g.id, checked: member.has(g.id) }), g.name)),
  );
  if (!groups.length) box.append(h("p", { class: "muted", text: "No groups yet." }));
  editDialog.showModal();
}

editForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = clean({
    name: editForm.elements.namedItem("name").value,
    location: editForm.elements.namedItem("location").value,
    sensor_type: editForm.elements.namedItem("sensor_type").value,
    description: editForm.elements.namedItem("description").value,
    status: editForm.elements.namedItem("status").value,
  });
  try {
    await api(`/api/v1/machines/${editing.id}`, { method: "PATCH", body: data });
    const before = new Set(editing.groups.map((g) => g.id));
    for (const box of document.querySelectorAll("#edit-groups input[type=checkbox]")) {
      if (box.checked && !before.has(box.value)) {
        await api(`/api/v1/groups/${box.value}/machines`, { method: "POST", body: { machine_ids: [editing.id] } });
      } else if (!box.checked && before.has(box.value)) {
        await api(`/api/v1/groups/${box.value}/machines/${editing.id}`, { method: "DELETE" });
      }
    }
    editDialog.close();
    notify(`${data.name} saved.`);
    await Promise.all([load(), loadGroups()]);
  } catch (error) {
    showFieldErrors(editForm, fieldErrors(error));
  }
});
document.getElementById("edit-cancel").addEventListener("click", () => editDialog.close());

// --------------------------------------------------------------------------- API key ----
const keyDialog = document.getElementById("key-dialog");
async function issueKey(machine) {
  if (machine.has_api_key && !confirm(`Rotate the API key of ${machine.name}? The current key stops working at once.`)) return;
  try {
    const issued = await api(`/api/v1/machines/${machine.id}/api-key`, { method: "POST" });
    document.getElementById("key-value").textContent = issued.api_key;
    keyDialog.showModal();
    await load();
  } catch (error) {
    failed(error);
  }
}
document.getElementById("key-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(document.getElementById("key-value").textContent);
    notify("Copied.");
  } catch {
    notify("Select the key and copy it by hand.", "error");
  }
});
keyDialog.addEventListener("close", () => {
  document.getElementById("key-value").textContent = ""; // gone from the page once closed
});

// ---------------------------------------------------------------------------- delete ----
const deleteDialog = document.getElementById("delete-dialog");
const deleteForm = document.getElementById("delete-form");
function openDelete(machine) {
  deleting = machine;
  document.getElementById("delete-name").textContent = machine.name;
  deleteForm.elements.namedItem("confirm").value = "";
  document.getElementById("delete-confirm").disabled = true;
  deleteDialog.showModal();
}
deleteForm.elements.namedItem("confirm").addEventListener("input", (event) => {
  document.getElementById("delete-confirm").disabled = event.target.value !== deleting.name;
});
deleteForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api(`/api/v1/machines/${deleting.id}`, { method: "DELETE" });
    deleteDialog.close();
    notify(`${deleting.name} deleted.`);
    await load();
  } catch (error) {
    failed(error);
  }
});
document.getElementById("delete-cancel").addEventListener("click", () => deleteDialog.close());

// ------------------------------------------------------------------------------ main ----
async function main() {
  user = await shell();
  if (!can(user, "machines:write")) {
    document.getElementById("manage-denied").hidden = false;
    return;
  }
  document.getElementById("manage").hidden = false;
  const addForm = document.getElementById("add-machine");
  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = clean(Object.fromEntries(new FormData(addForm)));
    try {
      const machine = await api("/api/v1/machines", { method: "POST", body: data });
      addForm.reset();
      showFieldErrors(addForm, {});
      notify(`${machine.name} added.`);
      await load();
    } catch (error) {
      showFieldErrors(addForm, fieldErrors(error));
    }
  });
  const groupForm = document.getElementById("add-group");
  groupForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/api/v1/groups", { method: "POST", body: { name: groupForm.elements.namedItem("name").value.trim() } });
      groupForm.reset();
      showFieldErrors(groupForm, {});
      await loadGroups();
    } catch (error) {
      showFieldErrors(groupForm, fieldErrors(error));
    }
  });
  document.getElementById("manage-search").addEventListener("input", debounce(() => {
    offset = 0;
    load().catch(failed);
  }, 250));
  document.getElementById("manage-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    load().catch(failed);
  });
  document.getElementById("manage-next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    load().catch(failed);
  });
  await Promise.all([load(), loadGroups()]);
}

main().catch(failed);
