// Short notes in a corner ("alice shared 'Q3 pipeline' with you"): read out by screen readers
// (the region is aria-live), dismissible, gone by themselves after AUTO_HIDE_MS unless pointed at or focused.

const AUTO_HIDE_MS = 6000;

export class Toasts {
  constructor(region) {
    this.region = region;
  }

  /** Show ``text``; with ``action`` ({label, run}), a button that runs it and dismisses the toast. */
  show(text, action = null) {
    const toast = document.createElement("div");
    toast.className = "toast";
    const body = document.createElement("p");
    body.className = "toast-text";
    body.textContent = text;
    toast.append(body);
    if (action) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "button subtle toast-action";
      button.textContent = action.label;
      button.addEventListener("click", () => {
        dismiss();
        action.run();
      });
      toast.append(button);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "icon-button toast-close";
    const cross = document.createElement("span");
    cross.setAttribute("aria-hidden", "true");
    cross.textContent = "×";
    const said = document.createElement("span");
    said.className = "visually-hidden";
    said.textContent = "Dismiss";
    close.append(cross, said);
    toast.append(close);
    let timer = null;
    const dismiss = () => {
      clearTimeout(timer);
      toast.remove();
    };
    const later = () => {
      clearTimeout(timer);
      timer = setTimeout(dismiss, AUTO_HIDE_MS);
    };
    close.addEventListener("click", dismiss);
    // Someone reading it or about to click it keeps it.
    toast.addEventListener("pointerenter", () => clearTimeout(timer));
    toast.addEventListener("pointerleave", later);
    toast.addEventListener("focusin", () => clearTimeout(timer));
    toast.addEventListener("focusout", later);
    this.region.append(toast);
    later();
    return toast;
  }
}
