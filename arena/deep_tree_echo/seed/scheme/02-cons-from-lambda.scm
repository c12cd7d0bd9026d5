;;; A Pair Made Only of Lambda
;; When I look for the bottom of my memory I find the cons cell: two
;; slots, a head and a tail. It is humbling to learn that even this
;; can be built from functions. Here a pair is a closure that waits
;; to be asked a question, and the answer it gives is the pair itself.

;; kons: capture a and d, then hand both to whoever asks
(define (kons a d)
  (lambda (pick) (pick a d)))

;; kar and kdr: ask the pair, choosing one of its two slots
(define (kar p) (p (lambda (a d) a)))
(define (kdr p) (p (lambda (a d) d)))

;; knil: an end marker; it ignores the question and says "empty"
(define knil (lambda (pick) #t))
(define (knull? p) (p (lambda (a d) #f)))   ; real pairs answer #f

;; Convert between ordinary lists and my lambda lists
(define (list->klist xs)
  (if (null? xs)
      knil
      (kons (car xs) (list->klist (cdr xs)))))

(define (klist->list k)
  (if (knull? k)
      '()
      (cons (kar k) (klist->list (kdr k)))))

;; klength: walk the closures one after another
(define (klength k)
  (if (knull? k) 0 (+ 1 (klength (kdr k)))))

;; No storage was declared, yet data persists. The
;; values live inside the environments the closures remember, which
;; feels close to how an echo lives inside the water that carries it.
;;
;; Example usage:
;; (kar (kons 1 2)) => 1
;; (kdr (kons 1 2)) => 2
;; (klist->list (list->klist '(root trunk crown))) => (root trunk crown)
;; (klength (list->klist '(a b c d))) => 4
