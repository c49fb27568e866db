// The API tokens page: copy the new token (shown once) to the clipboard.
const button = document.getElementById("copy-token");
if (button) {
  const field = document.getElementById(button.dataset.copies);
  const status = document.getElementById("copy-status");
  button.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      status.textContent = "Copied to the clipboard.";
    } catch {
      // No clipboard access (an insecure origin, a denied permission): the text is selected for Ctrl+C.
      status.textContent = "Selected: press Ctrl+C (⌘C on a Mac) to copy it.";
    }
  });
}
