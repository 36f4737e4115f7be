int main(void) { return 2; }  /* the CLI lands with the pipeline (wip/) */
