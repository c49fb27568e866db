// The share, rename and delete dialogs (native <dialog>: focus stays inside, Escape closes).
//
// The share dialog picks people as one types: ``GET /api/users/?q=`` (two
// letters at least) fills a listbox under the field (a combobox in ARIA terms:
// arrows move, Enter or a click adds the person, Escape closes the list).

import { api, urls } from "./api.js";
import { displayTitle } from "./sidebar.js";

function byId(id) {
  return document.getElementById(id);
}

const PICKER_DEBOUNCE_MS = 150;
const PICKER_MIN_CHARS = 2;

function closeButtons(dialog) {
  for (const button of dialog.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => dialog.close());
  }
}

/**
 * Wire the dialogs once.
 * @param {{current: () => object|null, currentUser: string, onChanged: (c: object) => void, onDeleted: (id: string) => void}} app
 */
export function setUpDialogs(app) {
  const share = new ShareDialog(app);
  const rename = new RenameDialog(app);
  const remove = new DeleteDialog(app);
  return { share, rename, remove };
}

class ShareDialog {
  constructor(app) {
    this.app = app;
    this.dialog = byId("share-dialog");
    this.people = byId("share-people");
    this.form = byId("share-form");
    this.input = byId("share-username");
    this.error = byId("share-error");
    this.ownerOnly = byId("share-owner-only");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.add();
    });
    this.people.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-username]");
      if (button) this.removeMember(button.dataset.username);
    });
    this.wirePicker();
  }

  // --- the people picker ------------------------------------------------------

  wirePicker() {
    this.list = byId("share-suggestions");
    this.suggestions = [];
    this.active = -1;
    this.asked = "";
    this.input.addEventListener("input", () => {
      clearTimeout(this.pickerTimer);
      this.pickerTimer = setTimeout(() => this.suggest(), PICKER_DEBOUNCE_MS);
    });
    this.input.addEventListener("keydown", (event) => this.pickerKey(event));
    this.input.addEventListener("blur", () => this.closeList());
    // mousedown, not click: the field keeps focus (its blur would close the list first).
    this.list.addEventListener("mousedown", (event) => {
      const option = event.target.closest("[role='option']");
      if (!option) return;
      event.preventDefault();
      this.pick(Number(option.dataset.index));
    });
  }

  async suggest() {
    const prefix = this.input.value.trim();
    this.asked = prefix;
    if (prefix.length < PICKER_MIN_CHARS) {
      this.showList([]);
      return;
    }
    let users = [];
    try {
      ({ users } = await api("GET", urls.users(prefix)));
    } catch {
      // Typing the whole username still works.
    }
    if (prefix !== this.asked) return; // a later keystroke asked again
    const conversation = this.app.current();
    const taken = new Set(conversation ? [conversation.owner, ...conversation.members] : []);
    this.showList(users.filter((u) => !taken.has(u.username)));
  }

  showList(users) {
    this.suggestions = users;
    this.active = users.length ? 0 : -1;
    this.list.replaceChildren(
      ...users.map((user, index) => {
        const option = document.createElement("li");
        option.id = `share-option-${index}`;
        option.className = "picker-option";
        option.setAttribute("role", "option");
        option.dataset.index = String(index);
        const name = document.createElement("span");
        name.className = "picker-username";
        name.textContent = user.username;
        option.append(name);
        if (user.full_name) {
          const full = document.createElement("span");
          full.className = "meta";
          full.textContent = user.full_name;
          option.append(full);
        }
        return option;
      }),
    );
    this.list.hidden = !users.length;
    this.input.setAttribute("aria-expanded", String(Boolean(users.length)));
    this.markActive();
  }

  markActive() {
    for (const option of this.list.children) {
      option.setAttribute("aria-selected", String(Number(option.dataset.index) === this.active));
    }
    if (this.active >= 0) {
      this.input.setAttribute("aria-activedescendant", `share-option-${this.active}`);
      this.list.children[this.active].scrollIntoView({ block: "nearest" });
    } else {
      this.input.removeAttribute("aria-activedescendant");
    }
  }

  closeList() {
    clearTimeout(this.pickerTimer);
    this.asked = "";
    this.showList([]);
  }

  pickerKey(event) {
    const open = !this.list.hidden;
    if ((event.key === "ArrowDown" || event.key === "ArrowUp") && open) {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      this.active = (this.active + step + this.suggestions.length) % this.suggestions.length;
      this.markActive();
    } else if (event.key === "Enter" && open && this.active >= 0) {
      event.preventDefault();
      this.pick(this.active);
    } else if (event.key === "Escape" && open) {
      event.preventDefault(); // closes the list, not the dialog
      this.closeList();
    }
  }

  pick(index) {
    const user = this.suggestions[index];
    if (!user) return;
    this.input.value = user.username;
    this.closeList();
    this.add();
  }

  open() {
    this.error.textContent = "";
    this.input.value = "";
    this.closeList();
    this.render();
    this.dialog.showModal();
    (this.isOwner ? this.input : this.dialog.querySelector(".dialog-x")).focus();
  }

  get isOwner() {
    const conversation = this.app.current();
    return conversation && conversation.owner === this.app.currentUser;
  }

  /** Redraw who has access (also called when the conversation changes while open). */
  render() {
    const conversation = this.app.current();
    if (!conversation) return;
    const rows = [];
    const owner = document.createElement("li");
    owner.className = "person";
    const ownerName = document.createElement("span");
    ownerName.textContent = conversation.owner;
    const ownerRole = document.createElement("span");
    ownerRole.className = "meta";
    ownerRole.textContent = "owner";
    owner.append(ownerName, ownerRole);
    rows.push(owner);
    for (const username of conversation.members) {
      const row = document.createElement("li");
      row.className = "person";
      const name = document.createElement("span");
      name.textContent = username;
      row.append(name);
      if (this.isOwner) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "button subtle danger";
        button.dataset.username = username;
        button.textContent = "Remove";
        button.setAttribute("aria-label", `Remove ${username}`);
        row.append(button);
      } else {
        const role = document.createElement("span");
        role.className = "meta";
        role.textContent = "member";
        row.append(role);
      }
      rows.push(row);
    }
    this.people.replaceChildren(...rows);
    this.form.hidden = !this.isOwner;
    this.ownerOnly.hidden = this.isOwner;
  }

  async add() {
    const conversation = this.app.current();
    const username = this.input.value.trim();
    if (!conversation || !username) return;
    this.error.textContent = "";
    try {
      const updated = await api("POST", urls.members(conversation.id), { username });
      this.input.value = "";
      this.app.onChanged(updated);
      this.render();
    } catch (error) {
      this.error.textContent = error.describe ? error.describe() : String(error);
    }
    this.input.focus();
  }

  async removeMember(username) {
    const conversation = this.app.current();
    if (!conversation) return;
    this.error.textContent = "";
    try {
      await api("DELETE", urls.member(conversation.id, username));
      const updated = await api("GET", urls.conversation(conversation.id));
      delete updated.messages;
      this.app.onChanged(updated);
      this.render();
      this.input.focus();
    } catch (error) {
      this.error.textContent = error.describe ? error.describe() : String(error);
    }
  }
}

class RenameDialog {
  constructor(app) {
    this.app = app;
    this.dialog = byId("rename-dialog");
    this.input = byId("rename-input");
    this.error = byId("rename-error");
    closeButtons(this.dialog);
    byId("rename-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
  }

  open() {
    const conversation = this.app.current();
    if (!conversation) return;
    this.error.textContent = "";
    this.input.value = conversation.title;
    this.dialog.showModal();
    this.input.select();
  }

  async save() {
    const conversation = this.app.current();
    try {
      const updated = await api("PATCH", urls.conversation(conversation.id), { title: this.input.value });
      this.app.onChanged(updated);
      this.dialog.close();
    } catch (error) {
      this.error.textContent = error.describe ? error.describe() : String(error);
    }
  }
}

class DeleteDialog {
  constructor(app) {
    this.app = app;
    this.dialog = byId("delete-dialog");
    this.error = byId("delete-error");
    closeButtons(this.dialog);
    byId("delete-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirm();
    });
  }

  open() {
    const conversation = this.app.current();
    if (!conversation) return;
    this.error.textContent = "";
    byId("delete-title").textContent = displayTitle(conversation);
    this.dialog.showModal();
    // Cancel is the safe default.
    this.dialog.querySelector("[data-close]").focus();
  }

  async confirm() {
    const conversation = this.app.current();
    try {
      await api("DELETE", urls.conversation(conversation.id));
      this.dialog.close();
      this.app.onDeleted(conversation.id);
    } catch (error) {
      this.error.textContent = error.describe ? error.describe() : String(error);
    }
  }
}
